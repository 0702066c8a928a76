//! LeakyReLU (alone and fused with a residual add), the plain residual add, exact GELU and softmax with
//! backward (candle's `softmax_last_dim` has none; its `gelu_erf` is a scalar libm loop, 20x slower than
//! ours on the ViT's MLP).

use crate::dtype::{up, via_f32};
use crate::error::{check_float, shape_err, OpsError};
use crate::kernels::activation::{add_fwd, add_leaky_relu_bwd, gelu_bwd, gelu_fwd, update_inplace, Update, leaky_relu_fwd, softmax_fwd};
use crate::storage::{data, data2, dispatch, dispatch2, out};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor, D};

struct LeakyRelu(f64);

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky_relu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::profile::timed("leaky_relu", || dispatch!(data(self.name(), s, l)?, |x| out(leaky_relu_fwd(x, None, self.0), l.shape().clone())))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::leaky_relu(s, l, self.0)?, l.shape().clone()))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // As PyTorch: slope where x <= 0.
        crate::profile::timed("leaky_relu_backward", || Ok(Some(x.gt(0.0)?.where_cond(g, &(g * self.0)?)?)))
    }
}

/// The gradient of `leaky_relu(x, slope)` from its output `y` (y > 0 exactly where x > 0, for slope > 0)
/// and the output's gradient `dy`: for a backward written by hand that keeps the output, not the input.
pub fn leaky_relu_backward_from_output(y: &Tensor, dy: &Tensor, slope: f64) -> Result<Tensor> {
    if y.dims() != dy.dims() || !(slope > 0.0) {
        return Err(crate::error::shape_err("leaky_relu_backward_from_output", format!("output and gradient of one shape, slope > 0 (slope {slope})"), &[y.dims(), dy.dims()]));
    }
    y.gt(0.0)?.where_cond(dy, &(dy * slope)?)
}

/// `F.leaky_relu(x, slope)`.
pub fn leaky_relu(x: &Tensor, slope: f64) -> Result<Tensor> {
    check_float("leaky_relu", x.dtype())?;
    if via_f32(x) {
        return leaky_relu(&up(x)?, slope)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op1(LeakyRelu(slope))
}

/// The two inputs of an element-wise binary op: float, one shape, one dtype.
fn check_pair(op: &'static str, a: &Tensor, b: &Tensor) -> Result<()> {
    check_float(op, a.dtype())?;
    if a.dims() != b.dims() {
        return Err(shape_err(op, "the two inputs differ in shape", &[a.dims(), b.dims()]));
    }
    if a.dtype() != b.dtype() {
        return Err(OpsError::DTypeMismatch { op, a: a.dtype(), b: b.dtype() }.into());
    }
    Ok(())
}

/// LeakyReLU(a + b): the residual join of MONAI's UnetResBlock in one pass (no intermediate sum).
struct AddLeakyRelu(f64);

impl CustomOp2 for AddLeakyRelu {
    fn name(&self) -> &'static str {
        "add_leaky_relu"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::profile::timed("add_leaky_relu", || {
            dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |a, b| out(leaky_relu_fwd(a, Some(b), self.0), l1.shape().clone()))
        })
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = crate::profile::timed("add_leaky_relu_backward", || a.apply_op3(b, &g.contiguous()?, AddLeakyReluBwd(self.0)))?;
        Ok((Some(d.clone()), Some(d)))
    }
}

/// (a, b, dy) -> d(a + b). First-order only.
struct AddLeakyReluBwd(f64);

impl CustomOp3 for AddLeakyReluBwd {
    fn name(&self) -> &'static str {
        "add_leaky_relu_backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = data(self.name(), s3, l3)?;
        match (data2(self.name(), s1, l1, s2, l2)?, g) {
            (crate::storage::Data2::F32(a, b), crate::storage::Data::F32(g)) => out(add_leaky_relu_bwd(a, b, g, self.0), l1.shape().clone()),
            (crate::storage::Data2::F64(a, b), crate::storage::Data::F64(g)) => out(add_leaky_relu_bwd(a, b, g, self.0), l1.shape().clone()),
            _ => Err(OpsError::Param { op: "add_leaky_relu", msg: "gradient dtype differs from the input's".into() }.into()),
        }
    }
}

/// `F.leaky_relu(a + b, slope)` in one pass on the CPU (a and b of the same shape and dtype).
pub fn add_leaky_relu(a: &Tensor, b: &Tensor, slope: f64) -> Result<Tensor> {
    check_pair("add_leaky_relu", a, b)?;
    if via_f32(a) {
        return add_leaky_relu(&up(a)?, &up(b)?, slope)?.to_dtype(a.dtype());
    }
    if !a.device().is_cpu() {
        return leaky_relu(&(a + b)?, slope);
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddLeakyRelu(slope))
}

/// a + b of one shape; the gradient goes to both.
struct Add;

impl CustomOp2 for Add {
    fn name(&self) -> &'static str {
        "add"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |a, b| out(add_fwd(a, b), l1.shape().clone()))
    }
    fn bwd(&self, _a: &Tensor, _b: &Tensor, _res: &Tensor, g: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(g.clone()), Some(g.clone())))
    }
}

/// `a + b` for tensors of one shape and dtype (the transformer's residual joins), on the CPU in one pass
/// on our thread pool. candle's element-wise ops above 64K elements run on a second pool of candle's own,
/// whose worker spins for about a millisecond after each op: on a 2-core machine it competes with our
/// threads (at 96^3, 1.8% of a forward's samples were that worker spinning and 1.1% the caller waiting
/// for it, for 24 adds of 166K floats).
pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_pair("add", a, b)?;
    if via_f32(a) {
        return add(&up(a)?, &up(b)?)?.to_dtype(a.dtype());
    }
    if !a.device().is_cpu() {
        return a + b;
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, Add)
}

/// Exact (erf) GELU; the backward is our kernel too. First-order only.
struct Gelu;

impl CustomOp1 for Gelu {
    fn name(&self) -> &'static str {
        "gelu"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::profile::timed("gelu", || dispatch!(data(self.name(), s, l)?, |x| out(gelu_fwd(x), l.shape().clone())))
    }
    fn bwd(&self, x: &Tensor, _res: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2(&g.contiguous()?, GeluBwd)?))
    }
}

struct GeluBwd;

impl CustomOp2 for GeluBwd {
    fn name(&self) -> &'static str {
        "gelu_backward"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        crate::profile::timed("gelu_backward", || dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |x, g| out(gelu_bwd(x, g), l1.shape().clone())))
    }
}

/// `F.gelu(x)` (exact, erf form), as `nn.GELU()`. On the CPU our vectorised kernel (f32 erf within a few
/// ulp); on other devices candle's `gelu_erf`.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    check_float("gelu", x.dtype())?;
    if via_f32(x) {
        return gelu(&up(x)?)?.to_dtype(x.dtype());
    }
    if !x.device().is_cpu() {
        return x.gelu_erf();
    }
    x.contiguous()?.apply_op1(Gelu)
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax_last_dim"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = l.dims().last().copied().unwrap_or(1);
        crate::profile::timed("softmax", || dispatch!(data(self.name(), s, l)?, |x| out(softmax_fwd(x, d), l.shape().clone())))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((crate::cuda::softmax(s, l)?, l.shape().clone()))
    }
    fn bwd(&self, _x: &Tensor, y: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        // dx = y * (g - sum(g * y)); written with candle ops, so it is itself differentiable.
        crate::profile::timed("softmax_backward", || {
            let dot = (g * y)?.sum_keepdim(D::Minus1)?;
            Ok(Some((y * g.broadcast_sub(&dot)?)?))
        })
    }
}

/// Softmax over the last axis, with backward.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    check_float("softmax_last_dim", x.dtype())?;
    if x.rank() == 0 {
        return Err(OpsError::Rank {
            op: "softmax_last_dim",
            expected: "rank >= 1",
            got: vec![],
        }
        .into());
    }
    if via_f32(x) {
        return softmax_last_dim(&up(x)?)?.to_dtype(x.dtype());
    }
    x.contiguous()?.apply_op1(Softmax)
}

struct UpdateInplace(Update);

impl UpdateInplace {
    /// Checks `a` and `b` and runs the update over `a`.
    fn run(self, a: &Tensor, b: &Tensor) -> Result<()> {
        use candle_core::InplaceOp2;
        let op = self.name();
        crate::storage::check_inplace(op, a)?;
        check_pair(op, a, b)?;
        a.inplace_op2(&b.contiguous()?, &self)
    }
}

impl candle_core::InplaceOp2 for UpdateInplace {
    fn name(&self) -> &'static str {
        match self.0 {
            Update::AddLeakyRelu(_) => "add_leaky_relu",
            Update::Add => "add",
            Update::LeakyReluBackwardFromOutput(_) => "leaky_relu_backward_from_output",
        }
    }
    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<()> {
        let b = data(self.name(), s2, l2)?;
        crate::profile::timed(self.name(), || {
            match (crate::storage::data_mut(self.name(), s1, l1)?, b) {
                (crate::storage::DataMut::F32(a), crate::storage::Data::F32(b)) => update_inplace(a, b, self.0),
                (crate::storage::DataMut::F64(a), crate::storage::Data::F64(b)) => update_inplace(a, b, self.0),
                _ => return Err(OpsError::Param { op: self.name(), msg: "the inputs differ in dtype".into() }.into()),
            }
            Ok(())
        })
    }
}

/// In-place [`add_leaky_relu`] for inference: a = LeakyReLU(a + b), overwriting `a` (and every view of its
/// storage). For a tensor the caller just made and nothing else reads; refuses tensors that track
/// gradients, non-contiguous ones and non-CPU devices.
pub fn add_leaky_relu_(a: &Tensor, b: &Tensor, slope: f64) -> Result<()> {
    UpdateInplace(Update::AddLeakyRelu(slope)).run(a, b)
}

/// In place, `a += b` (the same sum as [`add`]); the contract of [`add_leaky_relu_`]. For a backward
/// written by hand that sums the gradients reaching one tensor.
pub fn add_(a: &Tensor, b: &Tensor) -> Result<()> {
    UpdateInplace(Update::Add).run(a, b)
}

/// In place over the output `y`: [`leaky_relu_backward_from_output`]`(y, dy, slope)` (the same values);
/// the contract of [`add_leaky_relu_`] for `y`.
pub fn leaky_relu_backward_from_output_(y: &Tensor, dy: &Tensor, slope: f64) -> Result<()> {
    if !(slope > 0.0) {
        return Err(OpsError::Param { op: "leaky_relu_backward_from_output", msg: format!("slope must be > 0 (slope {slope})") }.into());
    }
    UpdateInplace(Update::LeakyReluBackwardFromOutput(slope)).run(y, dy)
}
