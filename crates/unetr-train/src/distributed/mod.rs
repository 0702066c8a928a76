//! Data-parallel training: `Communicator` (the collective operations a data-parallel step needs), its
//! in-process implementation for tests (`local`), the launchers' environments (`launch`: torchrun, Slurm,
//! mpirun), the rendezvous that carries a communicator's id from rank 0 to the others (`rendezvous`), and
//! the gradient all-reduce in flat buckets (`all_reduce_gradients`).
//!
//! Each rank runs the same loop as a single-device run (`trainer`) on its shard of every batch
//! (`unetr_data::loader::Shard`); after the micro-batches the summed gradients are averaged over the ranks,
//! and every rank applies the same update, so the replicas stay identical. Only rank 0 writes.

pub mod launch;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod rendezvous;

use crate::error::{Result, TrainError};
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use std::time::Duration;

/// The collectives a data-parallel trainer uses. Every call is made by every rank in the same order; each
/// wait has a timeout, and a rank that fails aborts the group so the others fail too instead of waiting.
pub trait Communicator: Send + Sync {
    fn rank(&self) -> usize;
    fn world_size(&self) -> usize;
    /// Element-wise sum over the ranks, in place (every rank receives the sum).
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over the ranks of an f32 tensor, returned on its device. By default it travels
    /// through host memory; a communicator that reduces device buffers where they lie overrides this.
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        let mut buf = t.flatten_all()?.to_vec1::<f32>()?;
        self.all_reduce_sum(&mut buf)?;
        Ok(Tensor::from_vec(buf, t.shape(), t.device())?)
    }
    /// Waits until every rank arrived.
    fn barrier(&self) -> Result<()>;
    /// Makes the other ranks' pending and future calls fail (called by a rank that gives up).
    fn abort(&self, why: &str);
    /// How long a rank waits for the others.
    fn timeout(&self) -> Duration;
}

/// A one-rank group: every collective is the identity (a single-device run).
#[derive(Debug, Default)]
pub struct SingleProcess;

impl Communicator for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn world_size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, _why: &str) {}
    fn timeout(&self) -> Duration {
        Duration::MAX
    }
}

/// Floats per all-reduce call: gradients travel in buckets of about this size (flat buffers, not one call
/// per tensor).
pub const BUCKET: usize = 1 << 22;

/// Averages summed gradients over the ranks: each parameter's gradient (zeros where a rank has none) is
/// packed, in `vars` order, into flat f32 buckets on the parameters' device, summed across ranks (on the
/// device with NCCL), divided by the world size and put back.
pub fn all_reduce_gradients(comm: &dyn Communicator, grads: &mut GradStore, vars: &[(String, Var)]) -> Result<()> {
    let w = comm.world_size();
    if w == 1 {
        return Ok(());
    }
    let mut start = 0;
    while start < vars.len() {
        let end = bucket_end(vars, start);
        let bucket = Tensor::cat(&vars[start..end].iter().map(|(_, v)| flat_gradient(grads, v)).collect::<Result<Vec<_>>>()?, 0)?;
        let mean = comm.all_reduce_sum_tensor(&bucket)?.affine(1.0 / w as f64, 0.0)?;
        drop(bucket);
        let mut off = 0;
        for (_, v) in &vars[start..end] {
            let n = v.elem_count();
            grads.insert(v.as_tensor(), mean.narrow(0, off, n)?.reshape(v.shape())?.to_dtype(v.dtype())?);
            off += n;
        }
        start = end;
    }
    Ok(())
}

/// One bucket from `start`: whole tensors until it holds [`BUCKET`] floats (a larger tensor goes alone).
fn bucket_end(vars: &[(String, Var)], start: usize) -> usize {
    let (mut end, mut len) = (start, 0);
    while end < vars.len() && (end == start || len + vars[end].1.elem_count() <= BUCKET) {
        len += vars[end].1.elem_count();
        end += 1;
    }
    end
}

/// A parameter's gradient as a flat f32 vector on its device, zeros where this rank has none.
fn flat_gradient(grads: &GradStore, v: &Var) -> Result<Tensor> {
    Ok(match grads.get(v.as_tensor()) {
        Some(g) => g.to_dtype(DType::F32)?.flatten_all()?,
        None => Tensor::zeros(v.elem_count(), DType::F32, v.device())?,
    })
}

/// The mean of a value over the ranks.
pub fn mean_over_ranks(comm: &dyn Communicator, v: f64) -> Result<f64> {
    let mut b = [v as f32];
    comm.all_reduce_sum(&mut b)?;
    Ok(b[0] as f64 / comm.world_size() as f64)
}

pub(crate) fn timeout_error(what: &str, rank: usize, t: Duration) -> TrainError {
    TrainError::Config(format!("rank {rank}: waited {:.0} s for the other ranks at {what} (a rank died or hangs; check its log)", t.as_secs_f64()))
}
