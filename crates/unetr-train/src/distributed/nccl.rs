//! The NCCL group for multi-GPU runs (feature `nccl`): one process per GPU, started by torchrun, Slurm or
//! mpirun (`launch`); rank 0 creates NCCL's unique id and hands it to the others through the rendezvous
//! (TCP at MASTER_ADDR:MASTER_PORT+1, since the launcher's own store holds MASTER_PORT, or a file in a
//! shared folder). Gradient buckets are all-reduced where they lie, in device memory, on candle's stream
//! (so the reduction is ordered after the backward that wrote them and before the update that reads them).

use super::launch::Launch;
use super::rendezvous;
use super::Communicator;
use crate::error::{Result, TrainError};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, Layout, Shape, Tensor};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How the unique id travels from rank 0 to the others.
#[derive(Debug, Clone)]
pub enum Rendezvous {
    /// Rank 0 listens at this host:port, the others connect.
    Tcp { host: String, port: u16 },
    /// Rank 0 writes this file (in a folder every rank sees), the others wait for it.
    File(PathBuf),
}

impl Rendezvous {
    /// From the launcher: MASTER_ADDR:MASTER_PORT + 1, or `dir/unetr-nccl-<job>.id` when given a folder.
    pub fn for_launch(l: &Launch, dir: Option<PathBuf>, job: &str) -> Result<Self> {
        if let Some(d) = dir {
            return Ok(Self::File(d.join(format!("unetr-nccl-{job}.id"))));
        }
        match &l.master {
            Some((host, port)) => Ok(Self::Tcp { host: host.clone(), port: port.checked_add(1).ok_or_else(|| TrainError::Config("MASTER_PORT 65535 leaves no port for the rendezvous".into()))? }),
            None => Err(TrainError::Config(format!("{}: no MASTER_ADDR/MASTER_PORT to meet at; give a shared folder (--rendezvous-dir)", l.launcher))),
        }
    }
}

fn nerr(what: &str, e: impl std::fmt::Debug) -> TrainError {
    TrainError::Config(format!("NCCL {what}: {e:?}"))
}

pub struct NcclComm {
    comm: Mutex<Comm>,
    rank: usize,
    world: usize,
    timeout: Duration,
}

// SAFETY: the NCCL communicator is used by one thread at a time (the Mutex); NCCL allows a communicator to
// move between threads as long as calls on it are not concurrent.
unsafe impl Send for NcclComm {}
unsafe impl Sync for NcclComm {}

impl NcclComm {
    /// Joins the group on `device` (this rank's GPU).
    pub fn new(l: &Launch, device: &candle_core::Device, rdv: &Rendezvous, timeout: Duration) -> Result<Self> {
        let candle_core::Device::Cuda(dev) = device else {
            return Err(TrainError::Config(format!("NCCL needs a CUDA device, got {device:?}")));
        };
        let id = if l.rank == 0 {
            let id = Id::new().map_err(|e| nerr("unique id", e))?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            match rdv {
                Rendezvous::Tcp { port, .. } => {
                    let bind = format!("0.0.0.0:{port}");
                    let (b, w) = (bytes.clone(), l.world);
                    // Served in the background while this rank joins (NCCL's init waits for every rank).
                    std::thread::spawn(move || {
                        if let Err(e) = rendezvous::serve_tcp(&bind, &b, w, timeout) {
                            tracing::error!("{e}");
                        }
                    });
                }
                Rendezvous::File(f) => rendezvous::publish_file(f, &bytes)?,
            }
            id
        } else {
            let bytes = match rdv {
                Rendezvous::Tcp { host, port } => rendezvous::fetch_tcp(&format!("{host}:{port}"), timeout)?,
                Rendezvous::File(f) => rendezvous::read_file(f, timeout)?,
            };
            if bytes.len() != 128 {
                return Err(TrainError::Config(format!("rendezvous: a {}-byte id, NCCL's is 128", bytes.len())));
            }
            let mut internal = [0 as std::ffi::c_char; 128];
            for (d, s) in internal.iter_mut().zip(&bytes) {
                *d = *s as std::ffi::c_char;
            }
            Id::uninit(internal)
        };
        let comm = Comm::from_rank(dev.cuda_stream(), l.rank, l.world, id).map_err(|e| nerr("init", e))?;
        Ok(Self { comm: Mutex::new(comm), rank: l.rank, world: l.world, timeout })
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world_size(&self) -> usize {
        self.world
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> Result<()> {
        let comm = self.comm.lock().map_err(|_| TrainError::Config("NCCL communicator poisoned".into()))?;
        let stream = comm.stream();
        let mut d = stream.clone_htod(&*buf).map_err(|e| nerr("copy to device", e))?;
        comm.all_reduce_in_place(&mut d, &ReduceOp::Sum).map_err(|e| nerr("all-reduce", e))?;
        stream.memcpy_dtoh(&d, buf).map_err(|e| nerr("copy to host", e))?;
        stream.synchronize().map_err(|e| nerr("synchronize", e))?;
        Ok(())
    }
    fn all_reduce_sum_tensor(&self, t: &Tensor) -> Result<Tensor> {
        if !t.device().is_cuda() || t.dtype() != candle_core::DType::F32 {
            return Err(TrainError::Config(format!("NCCL all-reduce: an f32 tensor on this rank's GPU, got {:?} on {:?}", t.dtype(), t.device())));
        }
        let comm = self.comm.lock().map_err(|_| TrainError::Config("NCCL communicator poisoned".into()))?;
        Ok(t.contiguous()?.apply_op1_no_bwd(&AllReduceSum(&comm))?)
    }
    fn barrier(&self) -> Result<()> {
        self.all_reduce_sum(&mut [0.0])
    }
    fn abort(&self, why: &str) {
        // NCCL has no portable abort through cudarc's safe API; the other ranks' waits end at NCCL's own
        // timeout (NCCL_TIMEOUT) and the launcher tears the job down when this process exits.
        tracing::error!("rank {} giving up: {why}", self.rank);
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
}

/// The NCCL sum of a device tensor into a new device buffer, as a candle op (so the result is a tensor on
/// the same device and stream).
struct AllReduceSum<'a>(&'a Comm);

impl CustomOp1 for AllReduceSum<'_> {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("NCCL all-reduce: the tensor is on the CPU, not on this rank's GPU")
    }
    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        let (a, b) = l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("NCCL all-reduce: non-contiguous tensor".into()))?;
        let src = s.as_cuda_slice::<f32>()?.slice(a..b);
        let dev = s.device().clone();
        // SAFETY: NCCL writes every element of the receive buffer.
        let mut out = unsafe { dev.alloc::<f32>(b - a)? };
        self.0.all_reduce(&src, &mut out, &ReduceOp::Sum).map_err(|e| candle_core::Error::Msg(format!("NCCL all-reduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev), l.shape().clone()))
    }
}
