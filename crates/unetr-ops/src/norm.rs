//! Instance norm, batch norm and layer norm with exact backward, plus the fused
//! instance norm + LeakyReLU that UNETR's conv blocks run after every convolution.
//!
//! candle's fused `LayerNorm` registers no backward (its gradients are silently dropped); these ops
//! all have one. The normalisation is a custom op; the optional affine part is plain candle
//! broadcasting, so its gradients come from candle's autograd, except layer norm's (weight and bias
//! over the last axis), which is one op of ours on the CPU (`LastAffine` below).

use crate::dtype::via_f32;
use crate::error::{check_float, shape_err, OpsError};
use crate::kernels::norm::{norm_bwd, norm_fwd, norm_fwd_inplace, Groups};
use crate::storage::{data, data2, dispatch, dispatch2, out};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, D};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Statistics per (sample, channel) over the spatial axes of [N, C, ...].
    Instance,
    /// Statistics per channel over batch and spatial axes of [N, C, ...].
    Batch,
    /// Statistics per row over the last axis.
    Layer,
}

#[derive(Clone, Copy, Debug)]
struct NormOp {
    kind: Kind,
    eps: f64,
    slope: Option<f64>,
}

impl NormOp {
    fn groups(&self, dims: &[usize]) -> Result<Groups> {
        let op = self.name_str();
        match self.kind {
            Kind::Instance | Kind::Batch => {
                if dims.len() < 3 {
                    return Err(OpsError::Rank {
                        op,
                        expected: "rank >= 3 (N, C, spatial...)",
                        got: dims.to_vec(),
                    }
                    .into());
                }
                let (n, c, len) = (dims[0], dims[1], dims[2..].iter().product());
                Ok(match self.kind {
                    Kind::Instance => Groups {
                        groups: n * c,
                        segs: 1,
                        len,
                    },
                    _ => Groups {
                        groups: c,
                        segs: n,
                        len,
                    },
                })
            }
            Kind::Layer => {
                let d = *dims.last().ok_or_else(|| OpsError::Rank {
                    op,
                    expected: "rank >= 1",
                    got: vec![],
                })?;
                Ok(Groups {
                    groups: dims.iter().product::<usize>() / d.max(1),
                    segs: 1,
                    len: d,
                })
            }
        }
    }
    fn name_str(&self) -> &'static str {
        match (self.kind, self.slope.is_some()) {
            (Kind::Instance, false) => "instance_norm",
            (Kind::Instance, true) => "instance_norm_leaky_relu",
            (Kind::Batch, _) => "batch_norm",
            (Kind::Layer, _) => "layer_norm",
        }
    }
}

impl CustomOp1 for NormOp {
    fn name(&self) -> &'static str {
        self.name_str()
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let gs = self.groups(l.dims())?;
        crate::profile::timed(self.name_str(), || {
            dispatch!(data(self.name(), s, l)?, |x| out(
                norm_fwd(x, &gs, self.eps, self.slope, None).0,
                l.shape().clone()
            ))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let gs = self.groups(l.dims())?;
        Ok((
            crate::cuda::norm(s, l, None, gs.groups, gs.segs, gs.len, self.eps, self.slope)?,
            l.shape().clone(),
        ))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(
            x.contiguous()?
                .apply_op2(&g.contiguous()?, NormBwd(*self))?,
        ))
    }
}

/// dx of [`NormOp`] given (x, dy). First-order only.
struct NormBwd(NormOp);

impl CustomOp2 for NormBwd {
    fn name(&self) -> &'static str {
        "norm_backward"
    }
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(shape_err(
                self.0.name_str(),
                "gradient shape differs from input shape",
                &[l1.dims(), l2.dims()],
            ));
        }
        let gs = self.0.groups(l1.dims())?;
        let label = match self.0.name_str() {
            "instance_norm" => "instance_norm_backward",
            "instance_norm_leaky_relu" => "instance_norm_leaky_relu_backward",
            "batch_norm" => "batch_norm_backward",
            _ => "layer_norm_backward",
        };
        crate::profile::timed(label, || {
            dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |x, dy| out(
                norm_bwd(x, dy, &gs, self.0.eps, self.0.slope),
                l1.shape().clone()
            ))
        })
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        if l1.dims() != l2.dims() {
            return Err(shape_err(
                self.0.name_str(),
                "gradient shape differs from input shape",
                &[l1.dims(), l2.dims()],
            ));
        }
        let gs = self.0.groups(l1.dims())?;
        Ok((
            crate::cuda::norm(
                s1,
                l1,
                Some((s2, l2)),
                gs.groups,
                gs.segs,
                gs.len,
                self.0.eps,
                self.0.slope,
            )?,
            l1.shape().clone(),
        ))
    }
}

fn normalize(x: &Tensor, op: NormOp) -> Result<Tensor> {
    check_float(op.name_str(), x.dtype())?;
    if x.elem_count() == 0 {
        return Err(shape_err(op.name_str(), "empty input", &[x.dims()]));
    }
    if !(op.eps >= 0.0) {
        return Err(OpsError::Param {
            op: op.name_str(),
            msg: format!("eps must be >= 0, got {}", op.eps),
        }
        .into());
    }
    if crate::dtype::via_f32(x) {
        return normalize(&crate::dtype::up(x)?, op)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op1(op)
}

/// y * weight + bias with weight/bias of shape [C] broadcast along axis 1 (norms of [N, C, ...]).
fn channel_affine(
    op: &'static str,
    y: Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let c = y.dim(1)?;
    let mut shape = vec![1; y.rank()];
    shape[1] = c;
    let ydims = y.dims().to_vec();
    let param = |t: &Tensor, name: &str| -> Result<Tensor> {
        if t.dims() != [c] {
            return Err(shape_err(
                op,
                format!("{name} must have shape [{c}]"),
                &[t.dims(), &ydims],
            ));
        }
        t.reshape(shape.as_slice())
    };
    crate::profile::timed("norm_affine", || {
        let y = match weight {
            Some(w) => y.broadcast_mul(&param(w, "weight")?)?,
            None => y,
        };
        match bias {
            Some(b) => y.broadcast_add(&param(b, "bias")?),
            None => Ok(y),
        }
    })
}

/// `F.instance_norm(x, weight=weight, bias=bias, eps=eps)` without running statistics;
/// x: [N, C, ...] (UNETR: N, C, D, H, W).
pub fn instance_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    let y = normalize(
        x,
        NormOp {
            kind: Kind::Instance,
            eps,
            slope: None,
        },
    )?;
    channel_affine("instance_norm", y, weight, bias)
}

/// `leaky_relu(instance_norm(x), slope)` in one pass over memory (no affine, as in MONAI's UNETR blocks).
pub fn instance_norm_leaky_relu(x: &Tensor, eps: f64, slope: f64) -> Result<Tensor> {
    normalize(
        x,
        NormOp {
            kind: Kind::Instance,
            eps,
            slope: Some(slope),
        },
    )
}

/// The gradient of [`instance_norm`] without affine (`slope: None`) or of [`instance_norm_leaky_relu`]
/// (`Some(slope)`) with respect to `x`, given the output's gradient `dy`, computed directly (no autograd
/// graph): for a backward written by hand.
pub fn instance_norm_backward(x: &Tensor, dy: &Tensor, eps: f64, slope: Option<f64>) -> Result<Tensor> {
    if x.dims() != dy.dims() || x.dtype() != dy.dtype() {
        return Err(shape_err("instance_norm_backward", "gradient shape or dtype differs from the input's", &[x.dims(), dy.dims()]));
    }
    let op = NormOp { kind: Kind::Instance, eps, slope };
    op.groups(x.dims())?;
    if via_f32(x) {
        return instance_norm_backward(&x.to_dtype(candle_core::DType::F32)?, &dy.to_dtype(candle_core::DType::F32)?, eps, slope)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op2(&dy.contiguous()?, NormBwd(op))
}

struct NormBwdInplace(NormOp);

impl candle_core::InplaceOp2 for NormBwdInplace {
    fn name(&self) -> &'static str {
        "instance_norm_backward"
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let gs = self.0.groups(l2.dims())?;
        let x = crate::storage::data(self.name(), s2, l2)?;
        crate::profile::timed(self.name(), || {
            use crate::kernels::norm::norm_bwd_inplace as run;
            use crate::storage::{Data, DataMut};
            match (crate::storage::data_mut(self.name(), s1, l1)?, x) {
                (DataMut::F32(dy), Data::F32(x)) => run(x, dy, &gs, self.0.eps, self.0.slope),
                (DataMut::F64(dy), Data::F64(x)) => run(x, dy, &gs, self.0.eps, self.0.slope),
                _ => return Err(OpsError::Param { op: "instance_norm_backward", msg: "the gradient's dtype differs from the input's".into() }.into()),
            }
            Ok(())
        })
    }
}

/// [`instance_norm_backward`] written over `dy` (the same values), for a backward written by hand that no
/// longer needs the output's gradient; the contract of [`instance_norm_`] for `dy`.
pub fn instance_norm_backward_(x: &Tensor, dy: &Tensor, eps: f64, slope: Option<f64>) -> Result<()> {
    const OP: &str = "instance_norm_backward";
    crate::storage::check_inplace(OP, dy)?;
    check_float(OP, dy.dtype())?;
    if x.dims() != dy.dims() || x.dtype() != dy.dtype() {
        return Err(shape_err(OP, "gradient shape or dtype differs from the input's", &[x.dims(), dy.dims()]));
    }
    let op = NormOp { kind: Kind::Instance, eps, slope };
    op.groups(x.dims())?;
    dy.inplace_op2(&x.contiguous()?, &NormBwdInplace(op))
}

/// Running statistics of a batch norm after one training step.
#[derive(Debug, Clone)]
pub struct RunningStats {
    pub mean: Tensor,
    pub var: Tensor,
}

/// `F.batch_norm` over [N, C, ...]. In training, normalises with the batch statistics and returns the
/// updated running statistics (PyTorch's rule: biased variance to normalise, unbiased to track,
/// `running = (1 - momentum) * running + momentum * batch`). In evaluation, normalises with the
/// running statistics and returns `None`.
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(
    x: &Tensor,
    running_mean: &Tensor,
    running_var: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    training: bool,
    momentum: f64,
    eps: f64,
) -> Result<(Tensor, Option<RunningStats>)> {
    const OP: &str = "batch_norm";
    check_float(OP, x.dtype())?;
    if x.rank() < 3 {
        return Err(OpsError::Rank {
            op: OP,
            expected: "rank >= 3 (N, C, spatial...)",
            got: x.dims().to_vec(),
        }
        .into());
    }
    let c = x.dim(1)?;
    for (t, name) in [(running_mean, "running_mean"), (running_var, "running_var")] {
        if t.dims() != [c] {
            return Err(shape_err(
                OP,
                format!("{name} must have shape [{c}]"),
                &[t.dims(), x.dims()],
            ));
        }
    }
    let mut bshape = vec![1; x.rank()];
    bshape[1] = c;
    if training {
        let count = x.elem_count() / c;
        if count < 2 {
            return Err(shape_err(
                OP,
                "training needs more than one value per channel",
                &[x.dims()],
            ));
        }
        let y = normalize(
            x,
            NormOp {
                kind: Kind::Batch,
                eps,
                slope: None,
            },
        )?;
        // Batch statistics for the running averages only: no gradient flows through them.
        let xd = x
            .detach()
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c, count))?;
        let mean = xd.mean(1)?;
        let var = xd.broadcast_sub(&mean.unsqueeze(1)?)?.sqr()?.sum(1)? / (count as f64 - 1.0);
        let stats = RunningStats {
            mean: ((running_mean.detach() * (1.0 - momentum))? + (mean * momentum)?)?,
            var: ((running_var.detach() * (1.0 - momentum))? + (var? * momentum)?)?,
        };
        Ok((channel_affine(OP, y, weight, bias)?, Some(stats)))
    } else {
        let mean = running_mean.reshape(bshape.as_slice())?;
        let rstd = (running_var + eps)?
            .sqrt()?
            .recip()?
            .reshape(bshape.as_slice())?;
        let y = x.broadcast_sub(&mean)?.broadcast_mul(&rstd)?;
        Ok((channel_affine(OP, y, weight, bias)?, None))
    }
}

/// `F.layer_norm(x, [D], weight, bias, eps)` over the last axis, with backward.
pub fn layer_norm(
    x: &Tensor,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let y = normalize(
        x,
        NormOp {
            kind: Kind::Layer,
            eps,
            slope: None,
        },
    )?;
    let d = y.dim(D::Minus1)?;
    let ydims = y.dims().to_vec();
    let check = |t: &Tensor, name: &str| -> Result<()> {
        if t.dims() != [d] {
            return Err(shape_err(
                OP,
                format!("{name} must have shape [{d}]"),
                &[t.dims(), &ydims],
            ));
        }
        Ok(())
    };
    crate::profile::timed("norm_affine", || {
        if let (Some(w), Some(b), true) = (weight, bias, y.device().is_cpu() && !via_f32(&y) && y.elem_count() > 0) {
            check(w, "weight")?;
            check(b, "bias")?;
            for p in [w, b] {
                if p.dtype() != y.dtype() {
                    return Err(OpsError::DTypeMismatch { op: OP, a: y.dtype(), b: p.dtype() }.into());
                }
            }
            return y.apply_op3(&w.contiguous()?, &b.contiguous()?, LastAffine);
        }
        let y = match weight {
            Some(w) => {
                check(w, "weight")?;
                y.broadcast_mul(w)?
            }
            None => y,
        };
        match bias {
            Some(b) => {
                check(b, "bias")?;
                y.broadcast_add(b)
            }
            None => Ok(y),
        }
    })
}

/// y * w + b with w, b over the last axis (layer norm's affine part) in one pass on our thread pool:
/// as two candle broadcast ops it ran on candle's own pool, whose worker then spins for about a
/// millisecond and competes with ours on a 2-core machine (see `unetr_ops::add`). Gradients: g w, and
/// the sums over rows of g y and g.
struct LastAffine;

impl candle_core::CustomOp3 for LastAffine {
    fn name(&self) -> &'static str {
        "norm_affine"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let b = data(self.name(), s3, l3)?;
        match (data2(self.name(), s1, l1, s2, l2)?, b) {
            (crate::storage::Data2::F32(y, w), crate::storage::Data::F32(b)) => out(last_affine(y, w, b), l1.shape().clone()),
            (crate::storage::Data2::F64(y, w), crate::storage::Data::F64(b)) => out(last_affine(y, w, b), l1.shape().clone()),
            _ => Err(OpsError::Param { op: "norm_affine", msg: "bias dtype differs from the input's".into() }.into()),
        }
    }
    fn bwd(&self, y: &Tensor, w: &Tensor, _b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = w.dim(0)?;
        let (g2, y2) = (g.reshape(((), d))?, y.reshape(((), d))?);
        Ok((Some(g.broadcast_mul(w)?), Some((&g2 * &y2)?.sum(0)?), Some(g2.sum(0)?)))
    }
}

fn last_affine<T: crate::kernels::Elem>(y: &[T], w: &[T], b: &[T]) -> Vec<T> {
    use rayon::prelude::*;
    let d = w.len();
    let mut o: Vec<T> = Vec::with_capacity(y.len());
    // Rows in chunks of about 64K values, as candle's own split.
    let rows = d * (65536 / d).max(1);
    o.spare_capacity_mut().par_chunks_mut(rows).zip(y.par_chunks(rows)).for_each(|(oc, yc)| {
        for (orow, yrow) in oc.chunks_mut(d).zip(yc.chunks(d)) {
            for (((v, &x), &wi), &bi) in orow.iter_mut().zip(yrow).zip(w).zip(b) {
                v.write(x * wi + bi);
            }
        }
    });
    // SAFETY: the chunks cover all of y's elements, each written above (y's length is a multiple of d).
    unsafe { o.set_len(y.len()) };
    o
}

struct NormInplace(NormOp);

impl candle_core::InplaceOp1 for NormInplace {
    fn name(&self) -> &'static str {
        self.0.name_str()
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let gs = self.0.groups(l.dims())?;
        crate::profile::timed(self.0.name_str(), || {
            match crate::storage::data_mut(self.0.name_str(), s, l)? {
                crate::storage::DataMut::F32(x) => {
                    norm_fwd_inplace(x, &gs, self.0.eps, self.0.slope)
                }
                crate::storage::DataMut::F64(x) => {
                    norm_fwd_inplace(x, &gs, self.0.eps, self.0.slope)
                }
            }
            Ok(())
        })
    }
}

fn normalize_(x: &Tensor, op: NormOp) -> Result<()> {
    crate::storage::check_inplace(op.name_str(), x)?;
    check_float(op.name_str(), x.dtype())?;
    if x.rank() < 3 || x.elem_count() == 0 {
        return Err(shape_err(
            op.name_str(),
            "expected a non-empty [N, C, spatial...] tensor",
            &[x.dims()],
        ));
    }
    x.inplace_op1(&NormInplace(op))
}

/// In-place [`instance_norm`] without affine, for inference: overwrites `x` (and every view of its storage),
/// saving an activation-sized buffer. For a tensor the caller just made and nothing else reads; refuses
/// tensors that track gradients, non-contiguous ones and non-CPU devices.
pub fn instance_norm_(x: &Tensor, eps: f64) -> Result<()> {
    normalize_(
        x,
        NormOp {
            kind: Kind::Instance,
            eps,
            slope: None,
        },
    )
}

/// In-place [`instance_norm_leaky_relu`]; the same contract as [`instance_norm_`].
pub fn instance_norm_leaky_relu_(x: &Tensor, eps: f64, slope: f64) -> Result<()> {
    normalize_(
        x,
        NormOp {
            kind: Kind::Instance,
            eps,
            slope: Some(slope),
        },
    )
}

struct NormAddLeakyReluInplace {
    eps: f64,
    norm_b: bool,
    slope: f64,
}

impl candle_core::InplaceOp2 for NormAddLeakyReluInplace {
    fn name(&self) -> &'static str {
        "instance_norm_add_leaky_relu"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        let gs = NormOp {
            kind: Kind::Instance,
            eps: self.eps,
            slope: None,
        }
        .groups(l1.dims())?;
        let b = crate::storage::data(self.name(), s2, l2)?;
        crate::profile::timed(self.name(), || {
            use crate::kernels::norm::norm_add_leaky_relu_inplace as run;
            use crate::storage::{Data, DataMut};
            match (crate::storage::data_mut(self.name(), s1, l1)?, b) {
                (DataMut::F32(a), Data::F32(b)) => {
                    run(a, b, &gs, self.eps, self.norm_b, self.slope)
                }
                (DataMut::F64(a), Data::F64(b)) => {
                    run(a, b, &gs, self.eps, self.norm_b, self.slope)
                }
                _ => {
                    return Err(OpsError::Param {
                        op: "instance_norm_add_leaky_relu",
                        msg: "the inputs differ in dtype".into(),
                    }
                    .into())
                }
            }
            Ok(())
        })
    }
}

/// UnetResBlock's end in place, for inference: a = LeakyReLU(IN(a) + (norm_b ? IN(b) : b)) with instance
/// norms without affine (eps), overwriting `a`. One pass over both tensors after their statistics, where
/// [`instance_norm_`] twice and [`crate::add_leaky_relu_`] make three; the values are the same. The same
/// contract as [`instance_norm_`] for `a`.
pub fn instance_norm_add_leaky_relu_(
    a: &Tensor,
    b: &Tensor,
    norm_b: bool,
    eps: f64,
    slope: f64,
) -> Result<()> {
    const OP: &str = "instance_norm_add_leaky_relu";
    crate::storage::check_inplace(OP, a)?;
    check_float(OP, a.dtype())?;
    if a.rank() < 3 || a.elem_count() == 0 {
        return Err(shape_err(
            OP,
            "expected a non-empty [N, C, spatial...] tensor",
            &[a.dims()],
        ));
    }
    if a.dims() != b.dims() {
        return Err(shape_err(
            OP,
            "the two inputs differ in shape",
            &[a.dims(), b.dims()],
        ));
    }
    if a.dtype() != b.dtype() {
        return Err(OpsError::DTypeMismatch {
            op: OP,
            a: a.dtype(),
            b: b.dtype(),
        }
        .into());
    }
    a.inplace_op2(
        &b.contiguous()?,
        &NormAddLeakyReluInplace { eps, norm_b, slope },
    )
}

struct NormAddProj1Inplace {
    eps: f64,
    slope: f64,
}

impl candle_core::InplaceOp3 for NormAddProj1Inplace {
    fn name(&self) -> &'static str {
        "instance_norm_add_proj1_leaky_relu"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<()> {
        let n = l1.dims()[0];
        let (x, w) = (
            crate::storage::data(self.name(), s2, l2)?,
            crate::storage::data(self.name(), s3, l3)?,
        );
        crate::profile::timed(self.name(), || {
            use crate::kernels::norm::norm_add_proj1_leaky_relu_inplace as run;
            use crate::storage::{Data, DataMut};
            match (crate::storage::data_mut(self.name(), s1, l1)?, x, w) {
                (DataMut::F32(a), Data::F32(x), Data::F32(w)) => {
                    run(a, x, w, n, self.eps, self.slope)
                }
                (DataMut::F64(a), Data::F64(x), Data::F64(w)) => {
                    run(a, x, w, n, self.eps, self.slope)
                }
                _ => {
                    return Err(OpsError::Param {
                        op: "instance_norm_add_proj1_leaky_relu",
                        msg: "the inputs differ in dtype".into(),
                    }
                    .into())
                }
            }
            Ok(())
        })
    }
}

/// UnetResBlock's end in place, for inference, when the residual projection is a 1x1x1 conv from one
/// input channel: a = LeakyReLU(IN(a) + IN(conv3d(x, w))) with x [N, 1, ...] and w [C, 1, 1, 1, 1]
/// (instance norms without affine, eps), overwriting `a` [N, C, ...]. The projection is never made: its
/// normalised values follow from x's statistics (see `kernels::norm::norm_add_proj1_leaky_relu_inplace`),
/// which saves an activation-sized buffer and a pass. The contract of [`instance_norm_`] for `a`.
pub fn instance_norm_add_proj1_leaky_relu_(
    a: &Tensor,
    x: &Tensor,
    w: &Tensor,
    eps: f64,
    slope: f64,
) -> Result<()> {
    const OP: &str = "instance_norm_add_proj1_leaky_relu";
    crate::storage::check_inplace(OP, a)?;
    check_float(OP, a.dtype())?;
    let (ad, xd) = (a.dims(), x.dims());
    if a.rank() < 3
        || a.elem_count() == 0
        || xd.len() != ad.len()
        || xd[0] != ad[0]
        || xd[1] != 1
        || xd[2..] != ad[2..]
    {
        return Err(shape_err(
            OP,
            "expected a [N, C, spatial...] and x [N, 1, spatial...]",
            &[ad, xd],
        ));
    }
    if w.elem_count() != ad[1] || w.dims().first() != Some(&ad[1]) {
        return Err(shape_err(
            OP,
            format!("the projection weight must be [{}, 1, 1, 1, 1]", ad[1]),
            &[w.dims()],
        ));
    }
    if a.dtype() != x.dtype() || a.dtype() != w.dtype() {
        return Err(OpsError::DTypeMismatch {
            op: OP,
            a: a.dtype(),
            b: if a.dtype() != x.dtype() {
                x.dtype()
            } else {
                w.dtype()
            },
        }
        .into());
    }
    a.inplace_op3(
        &x.contiguous()?,
        &w.contiguous()?,
        &NormAddProj1Inplace { eps, slope },
    )
}
