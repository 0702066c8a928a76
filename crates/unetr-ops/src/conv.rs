//! `conv3d` and `conv_transpose3d` as candle ops with backward (PyTorch semantics, NCDHW).
//!
//! Three linear maps share one geometry: the convolution `Fwd(x, w)`, its adjoint in the input
//! `BwdInput(dy, w)` (= the transposed convolution) and its adjoint in the weight `BwdWeight(x, dy)`.
//! Each one's gradient is expressed through the other two, so every op here has a backward, and
//! second-order gradients work too.

use crate::dtype::{up, up_opt, via_f32};
use crate::error::{shape_err, OpsError};
use crate::kernels::conv3d::{conv3d_bwd_input, conv3d_bwd_weight, conv3d_fwd, ConvGeom};
use crate::storage::{data2, dispatch2, out};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

/// Spatial hyper-parameters of a convolution; the kernel size comes from the weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv3dParams {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
}

impl Default for Conv3dParams {
    fn default() -> Self {
        Self {
            stride: [1; 3],
            padding: [0; 3],
        }
    }
}

impl Conv3dParams {
    pub fn new(stride: usize, padding: usize) -> Self {
        Self {
            stride: [stride; 3],
            padding: [padding; 3],
        }
    }
}

/// The three convolution kinds: the forward and its two adjoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Fwd,
    BwdInput,
    BwdWeight,
}

/// The spatial part of a geometry; batch and channels come from the operands' shapes.
#[derive(Clone, Copy, Debug)]
struct Spatial {
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    padding: [usize; 3],
    output: [usize; 3],
}

struct ConvOp {
    kind: Kind,
    sp: Spatial,
}

fn dims5(op: &'static str, what: &str, l: &Layout) -> Result<[usize; 5]> {
    <[usize; 5]>::try_from(l.dims())
        .map_err(|_| shape_err(op, format!("{what} must have rank 5"), &[l.dims()]))
}

impl ConvOp {
    fn name_of(kind: Kind) -> &'static str {
        match kind {
            Kind::Fwd => "conv3d",
            Kind::BwdInput => "conv3d_bwd_input",
            Kind::BwdWeight => "conv3d_bwd_weight",
        }
    }

    /// Full geometry from the operand shapes, checked against the stored spatial sizes.
    fn geom(&self, l1: &Layout, l2: &Layout) -> Result<(ConvGeom, Shape)> {
        let op = Self::name_of(self.kind);
        let sp = self.sp;
        let (a, b) = (
            dims5(op, "first operand", l1)?,
            dims5(op, "second operand", l2)?,
        );
        let bad = || {
            shape_err(
                op,
                "operands do not fit the convolution geometry",
                &[l1.dims(), l2.dims()],
            )
        };
        let g = |n, ci, co| ConvGeom {
            n,
            ci,
            co,
            input: sp.input,
            kernel: sp.kernel,
            stride: sp.stride,
            padding: sp.padding,
            output: sp.output,
        };
        match self.kind {
            Kind::Fwd => {
                // (x [n, ci, in], w [co, ci, k])
                if a[1] != b[1] || a[2..] != sp.input || b[2..] != sp.kernel {
                    return Err(bad());
                }
                let [o0, o1, o2] = sp.output;
                Ok((g(a[0], a[1], b[0]), Shape::from((a[0], b[0], o0, o1, o2))))
            }
            Kind::BwdInput => {
                // (dy [n, co, out], w [co, ci, k])
                if a[1] != b[0] || a[2..] != sp.output || b[2..] != sp.kernel {
                    return Err(bad());
                }
                let [i0, i1, i2] = sp.input;
                Ok((g(a[0], b[1], b[0]), Shape::from((a[0], b[1], i0, i1, i2))))
            }
            Kind::BwdWeight => {
                // (x [n, ci, in], dy [n, co, out])
                if a[0] != b[0] || a[2..] != sp.input || b[2..] != sp.output {
                    return Err(bad());
                }
                let [k0, k1, k2] = sp.kernel;
                Ok((g(a[0], a[1], b[1]), Shape::from((b[1], a[1], k0, k1, k2))))
            }
        }
    }
}

fn apply(kind: Kind, sp: Spatial, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    // The kernels read plain row-major slices; copying a strided view here is cheaper than strided kernels.
    a.contiguous()?
        .apply_op2(&b.contiguous()?, ConvOp { kind, sp })
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        Self::name_of(self.kind)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, shape) = self.geom(l1, l2)?;
        let label = match self.kind {
            Kind::Fwd => "conv3d_fwd",
            Kind::BwdInput => "conv3d_bwd_input",
            Kind::BwdWeight => "conv3d_bwd_weight",
        };
        crate::profile::timed(label, || {
            dispatch2!(data2(self.name(), s1, l1, s2, l2)?, |a, b| {
                let v = match self.kind {
                    Kind::Fwd => conv3d_fwd(a, b, &g),
                    Kind::BwdInput => conv3d_bwd_input(a, b, &g),
                    Kind::BwdWeight => conv3d_bwd_weight(a, b, &g),
                };
                out(v, shape)
            })
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
        let (g, shape) = self.geom(l1, l2)?;
        Ok((
            crate::cuda::conv(self.kind, s1, l1, s2, l2, &g, shape.elem_count())?,
            shape,
        ))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (ga, gb) = crate::profile::timed("conv3d_backward", || adjoint_grads(self.kind, self.sp, a, b, g))?;
        Ok((Some(ga), Some(gb)))
    }
}

/// The gradients of both operands of the convolution kind `kind` on (a, b), given its output's gradient
/// `g`: each of the three linear maps' adjoints expressed through the other two.
fn adjoint_grads(kind: Kind, sp: Spatial, a: &Tensor, b: &Tensor, g: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok(match kind {
        // y = F(x, w): dx = B_in(dy, w), dw = B_w(x, dy)
        Kind::Fwd => (apply(Kind::BwdInput, sp, g, b)?, apply(Kind::BwdWeight, sp, a, g)?),
        // dx = B_in(dy, w): d(dy) = F(g, w), dw = B_w(g, dy)
        Kind::BwdInput => (apply(Kind::Fwd, sp, g, b)?, apply(Kind::BwdWeight, sp, g, a)?),
        // dw = B_w(x, dy): dx = B_in(dy, g), d(dy) = F(x, g)
        Kind::BwdWeight => (apply(Kind::BwdInput, sp, b, g)?, apply(Kind::Fwd, sp, a, g)?),
    })
}

fn check_pair(
    op: &'static str,
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    co: usize,
) -> Result<()> {
    crate::error::check_float(op, x.dtype())?;
    if x.dtype() != w.dtype() {
        return Err(OpsError::DTypeMismatch {
            op,
            a: x.dtype(),
            b: w.dtype(),
        }
        .into());
    }
    if x.rank() != 5 {
        return Err(OpsError::Rank {
            op,
            expected: "input of rank 5 (N, C, D, H, W)",
            got: x.dims().to_vec(),
        }
        .into());
    }
    if w.rank() != 5 {
        return Err(OpsError::Rank {
            op,
            expected: "weight of rank 5",
            got: w.dims().to_vec(),
        }
        .into());
    }
    if let Some(b) = bias {
        if b.dims() != [co] || b.dtype() != x.dtype() {
            return Err(shape_err(
                op,
                format!("bias must be [{co}] of dtype {:?}", x.dtype()),
                &[b.dims()],
            ));
        }
    }
    if x.dims().iter().any(|&d| d == 0) || w.dims().iter().any(|&d| d == 0) {
        return Err(shape_err(op, "zero-sized dimension", &[x.dims(), w.dims()]));
    }
    Ok(())
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        // Nothing tracks gradients (inference): add into the fresh output instead of making another
        // (UNETR's head: a second 14 x 96^3 buffer at the end of the forward).
        Some(b) if crate::storage::inplace_ok(&y) && !b.track_op() && b.dtype() == y.dtype() => {
            y.inplace_op2(&b.contiguous()?, &BiasInplace)?;
            Ok(y)
        }
        Some(b) => crate::profile::timed("conv_bias_add", || {
            y.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1, 1))?)
        }),
        None => Ok(y),
    }
}

/// y[n, c, ...] += bias[c], in place.
struct BiasInplace;

impl candle_core::InplaceOp2 for BiasInplace {
    fn name(&self) -> &'static str {
        "conv_bias_add"
    }
    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<()> {
        // y is [n, co, vol]: channel i % co for each of the n * co rows.
        fn add<T: crate::kernels::Elem>(y: &mut [T], b: &[T], n: usize) {
            let vol = y.len() / (n * b.len()).max(1);
            for (i, row) in y.chunks_mut(vol.max(1)).enumerate() {
                let v = b[i % b.len()];
                row.iter_mut().for_each(|y| *y = *y + v);
            }
        }
        let b = crate::storage::data(self.name(), s2, l2)?;
        let (n, co) = (l1.dims()[0], l1.dims()[1]);
        crate::profile::timed(self.name(), || {
            use crate::storage::{Data, DataMut};
            match (crate::storage::data_mut(self.name(), s1, l1)?, b) {
                (DataMut::F32(y), Data::F32(b)) if b.len() == co && y.len() % (n * co) == 0 => {
                    add(y, b, n)
                }
                (DataMut::F64(y), Data::F64(b)) if b.len() == co && y.len() % (n * co) == 0 => {
                    add(y, b, n)
                }
                _ => {
                    return Err(OpsError::Param {
                        op: "conv_bias_add",
                        msg: "bias does not match the output".into(),
                    }
                    .into())
                }
            }
            Ok(())
        })
    }
}

/// 3D convolution as `torch.nn.functional.conv3d(x, w, bias, stride, padding)`.
/// x: `[N, Ci, D, H, W]`, w: `[Co, Ci, kd, kh, kw]`, bias: `[Co]`.
pub fn conv3d(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, p: Conv3dParams) -> Result<Tensor> {
    const OP: &str = "conv3d";
    check_pair(OP, x, w, bias, w.dims().first().copied().unwrap_or(0))?;
    let (xd, wd) = (x.dims(), w.dims());
    if xd[1] != wd[1] {
        return Err(shape_err(
            OP,
            format!("input has {} channels, weight expects {}", xd[1], wd[1]),
            &[xd, wd],
        ));
    }
    let input = [xd[2], xd[3], xd[4]];
    let kernel = [wd[2], wd[3], wd[4]];
    let output = ConvGeom::out_size(input, kernel, p.stride, p.padding).ok_or_else(|| {
        shape_err(
            OP,
            format!(
                "kernel {kernel:?} does not fit the input padded by {:?} (stride {:?})",
                p.padding, p.stride
            ),
            &[xd, wd],
        )
    })?;
    if via_f32(x) {
        return conv3d(&up(x)?, &up(w)?, up_opt(bias)?.as_ref(), p)?.to_dtype(x.dtype());
    }
    let sp = Spatial {
        input,
        kernel,
        stride: p.stride,
        padding: p.padding,
        output,
    };
    add_bias(apply(Kind::Fwd, sp, x, w)?, bias)
}

/// 3D transposed convolution as `torch.nn.functional.conv_transpose3d(x, w, bias, stride, padding,
/// output_padding)`. x: `[N, Ci, D, H, W]`, w: `[Ci, Co, kd, kh, kw]` (PyTorch's layout), bias: `[Co]`.
pub fn conv_transpose3d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    p: Conv3dParams,
    output_padding: [usize; 3],
) -> Result<Tensor> {
    const OP: &str = "conv_transpose3d";
    check_pair(OP, x, w, bias, w.dims().get(1).copied().unwrap_or(0))?;
    let (xd, wd) = (x.dims(), w.dims());
    if xd[1] != wd[0] {
        return Err(shape_err(
            OP,
            format!("input has {} channels, weight expects {}", xd[1], wd[0]),
            &[xd, wd],
        ));
    }
    let kernel = [wd[2], wd[3], wd[4]];
    let mut full = [0; 3];
    for i in 0..3 {
        if p.stride[i] == 0 || output_padding[i] >= p.stride[i] {
            return Err(OpsError::Param {
                op: OP,
                msg: format!(
                    "output_padding {output_padding:?} must be smaller than stride {:?}",
                    p.stride
                ),
            }
            .into());
        }
        let span = (xd[2 + i] - 1) * p.stride[i] + kernel[i] + output_padding[i];
        if span <= 2 * p.padding[i] {
            return Err(shape_err(
                OP,
                format!("padding {:?} leaves an empty output", p.padding),
                &[xd, wd],
            ));
        }
        full[i] = span - 2 * p.padding[i];
    }
    if via_f32(x) {
        return conv_transpose3d(&up(x)?, &up(w)?, up_opt(bias)?.as_ref(), p, output_padding)?
            .to_dtype(x.dtype());
    }
    // The transposed convolution is the input-adjoint of the convolution from `full` back to x's size.
    let sp = Spatial {
        input: full,
        kernel,
        stride: p.stride,
        padding: p.padding,
        output: [xd[2], xd[3], xd[4]],
    };
    add_bias(apply(Kind::BwdInput, sp, x, w)?, bias)
}

/// The gradients (dx, dw) of `conv3d(x, w, None, p)` given its output's gradient `dy`, computed directly
/// (no autograd graph): for a backward written by hand, which frees each saved tensor once used.
pub fn conv3d_backward(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv3dParams) -> Result<(Tensor, Tensor)> {
    let sp = conv3d_spatial("conv3d_backward", x, w, p)?;
    // The ops' own geometry checks refuse a `dy` that does not fit.
    backward_of(Kind::Fwd, sp, x, w, dy)
}

/// The weight gradient alone of [`conv3d_backward`] (so that a hand-written backward can drop `x` before the
/// input gradient is made).
pub fn conv3d_backward_weight(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv3dParams) -> Result<Tensor> {
    let sp = conv3d_spatial("conv3d_backward", x, w, p)?;
    check_grad_dtype(x, dy)?;
    if via_f32(x) {
        return conv3d_backward_weight(&up(x)?, &up(w)?, &up(dy)?, p)?.to_dtype(x.dtype());
    }
    apply(Kind::BwdWeight, sp, x, dy)
}

/// The input gradient alone of [`conv3d_backward`], for an input of shape `x_dims` (dtype of `w`).
pub fn conv3d_backward_input(x_dims: &[usize], w: &Tensor, dy: &Tensor, p: Conv3dParams) -> Result<Tensor> {
    const OP: &str = "conv3d_backward";
    let d = <[usize; 5]>::try_from(x_dims).map_err(|_| shape_err(OP, "input must have rank 5", &[x_dims]))?;
    if w.rank() != 5 || w.dim(1)? != d[1] {
        return Err(shape_err(OP, "weight does not fit the input's channels", &[x_dims, w.dims()]));
    }
    let (input, kernel) = (spatial(&d), spatial(w.dims()));
    let output = ConvGeom::out_size(input, kernel, p.stride, p.padding)
        .ok_or_else(|| shape_err(OP, "kernel does not fit the padded input", &[x_dims, w.dims()]))?;
    check_grad_dtype(w, dy)?;
    if via_f32(w) {
        return conv3d_backward_input(x_dims, &up(w)?, &up(dy)?, p)?.to_dtype(w.dtype());
    }
    apply(Kind::BwdInput, Spatial { input, kernel, stride: p.stride, padding: p.padding, output }, dy, w)
}

/// The spatial geometry of `conv3d(x, w, None, p)`, checked.
fn conv3d_spatial(op: &'static str, x: &Tensor, w: &Tensor, p: Conv3dParams) -> Result<Spatial> {
    check_pair(op, x, w, None, 0)?;
    let (input, kernel) = (spatial(x.dims()), spatial(w.dims()));
    let output = ConvGeom::out_size(input, kernel, p.stride, p.padding)
        .ok_or_else(|| shape_err(op, "kernel does not fit the padded input", &[x.dims(), w.dims()]))?;
    Ok(Spatial { input, kernel, stride: p.stride, padding: p.padding, output })
}

fn check_grad_dtype(x: &Tensor, dy: &Tensor) -> Result<()> {
    if dy.dtype() != x.dtype() {
        return Err(OpsError::DTypeMismatch { op: "conv3d_backward", a: x.dtype(), b: dy.dtype() }.into());
    }
    Ok(())
}

/// The gradients (dx, dw) of `conv_transpose3d(x, w, None, p, [0; 3])` given its output's gradient `dy`,
/// computed directly (see [`conv3d_backward`]).
pub fn conv_transpose3d_backward(x: &Tensor, w: &Tensor, dy: &Tensor, p: Conv3dParams) -> Result<(Tensor, Tensor)> {
    const OP: &str = "conv_transpose3d_backward";
    check_pair(OP, x, w, None, 0)?;
    if dy.rank() != 5 {
        return Err(shape_err(OP, "output gradient must have rank 5", &[dy.dims()]));
    }
    // The transposed convolution is the input-adjoint of the convolution from dy's size to x's.
    let (input, kernel, output) = (spatial(dy.dims()), spatial(w.dims()), spatial(x.dims()));
    if ConvGeom::out_size(input, kernel, p.stride, p.padding) != Some(output) {
        return Err(shape_err(OP, "output gradient does not fit the transposed convolution of the input", &[x.dims(), w.dims(), dy.dims()]));
    }
    backward_of(Kind::BwdInput, Spatial { input, kernel, stride: p.stride, padding: p.padding, output }, x, w, dy)
}

/// The spatial sizes of a rank-5 shape (checked by the caller).
fn spatial(d: &[usize]) -> [usize; 3] {
    [d[2], d[3], d[4]]
}

/// [`adjoint_grads`] of the op `kind` on (x, w) for a hand-written backward (half precision via f32, as the
/// forwards).
fn backward_of(kind: Kind, sp: Spatial, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    check_grad_dtype(x, dy)?;
    if via_f32(x) {
        let (dx, dw) = backward_of(kind, sp, &up(x)?, &up(w)?, &up(dy)?)?;
        return Ok((dx.to_dtype(x.dtype())?, dw.to_dtype(x.dtype())?));
    }
    adjoint_grads(kind, sp, x, w, dy)
}

/// The in-place forwards (`conv3d_`, `conv3d_cat_`): `a` (and `b`) are overwritten, see those.
struct ConvInplace {
    /// The second input block and output (`conv3d_cat_`), the 1x1x1 weight for it.
    b: Option<(Tensor, Tensor)>,
    w: Tensor,
    g: ConvGeom,
}

const OP_INPLACE: &str = "conv3d_inplace";

/// The contiguous data of a CPU tensor (the weights of an in-place conv), as a read guard and range.
fn read_cpu(
    t: &Tensor,
) -> Result<(
    impl std::ops::Deref<Target = candle_core::Storage> + '_,
    std::ops::Range<usize>,
)> {
    let (st, l) = t.storage_and_layout();
    let (a, b) = l.contiguous_offsets().ok_or_else(|| OpsError::Param {
        op: OP_INPLACE,
        msg: "non-contiguous weight".into(),
    })?;
    Ok((st, a..b))
}

/// The typed slice of a CPU storage range, or a dtype error.
fn typed<T: candle_core::WithDType>(s: &candle_core::Storage, r: std::ops::Range<usize>) -> Result<&[T]> {
    match s {
        candle_core::Storage::Cpu(c) => Ok(&c.as_slice::<T>()?[r]),
        _ => Err(OpsError::Param {
            op: OP_INPLACE,
            msg: "weights must be on the CPU".into(),
        }
        .into()),
    }
}

impl ConvInplace {
    fn run<T: crate::kernels::Elem>(&self, a: &mut [T]) -> Result<()> {
        let (ws, wr) = read_cpu(&self.w)?;
        let w = typed::<T>(&ws, wr)?;
        match &self.b {
            None => crate::kernels::conv3d::conv3d_fwd_inplace(a, None, w, &self.g),
            Some((b, w_side)) => {
                let (ss, sr) = read_cpu(w_side)?;
                let w_side = typed::<T>(&ss, sr)?;
                // `b` is a second tensor to write: its own in-place op hands out its storage, while this one
                // holds `a`'s (two distinct write locks).
                let inner = Inner {
                    a: crate::kernels::SyncPtr(a.as_mut_ptr()),
                    len: a.len(),
                    w,
                    w_side,
                    g: self.g,
                };
                b.inplace_op1(&inner)?;
            }
        }
        Ok(())
    }
}

struct Inner<'a, T> {
    a: crate::kernels::SyncPtr<T>,
    len: usize,
    w: &'a [T],
    w_side: &'a [T],
    g: ConvGeom,
}

impl<T: crate::kernels::Elem> candle_core::InplaceOp1 for Inner<'_, T> {
    fn name(&self) -> &'static str {
        OP_INPLACE
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let b = crate::storage::slice_mut::<T>(OP_INPLACE, s, l)?;
        // SAFETY: `a` points at the storage the outer op holds under its write lock for this whole call,
        // and nothing else uses it meanwhile; `b` is another tensor's storage (checked by the caller).
        let a = unsafe { std::slice::from_raw_parts_mut(self.a.ptr(), self.len) };
        crate::kernels::conv3d::conv3d_fwd_inplace(a, Some((b, self.w_side)), self.w, &self.g);
        Ok(())
    }
}

impl candle_core::InplaceOp1 for ConvInplace {
    fn name(&self) -> &'static str {
        OP_INPLACE
    }
    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        crate::profile::timed(OP_INPLACE, || {
            match crate::storage::data_mut(OP_INPLACE, s, l)? {
                crate::storage::DataMut::F32(a) => self.run(a),
                crate::storage::DataMut::F64(a) => self.run(a),
            }
        })
    }
}

/// Whether two tensors share one storage (then one of them cannot be written while the other is read).
fn same_storage(a: &Tensor, b: &Tensor) -> bool {
    let (sa, _) = a.storage_and_layout();
    let (sb, _) = b.storage_and_layout();
    std::ptr::eq(&*sa, &*sb)
}

/// Checks of the in-place convs; returns the geometry.
fn inplace_geom(
    a: &Tensor,
    b: Option<(&Tensor, &Tensor)>,
    w: &Tensor,
    p: Conv3dParams,
) -> Result<ConvGeom> {
    const OP: &str = OP_INPLACE;
    crate::storage::check_inplace(OP, a)?;
    check_pair(OP, a, w, None, w.dims().first().copied().unwrap_or(0))?;
    let (ad, wd) = (a.dims(), w.dims());
    let cb = match b {
        Some((b, ws)) => {
            crate::storage::check_inplace(OP, b)?;
            check_pair(OP, b, ws, None, 0)?;
            if b.dims()[0] != ad[0] || b.dims()[2..] != ad[2..] {
                return Err(shape_err(
                    OP,
                    "the two input blocks differ in batch or spatial size",
                    &[ad, b.dims()],
                ));
            }
            if b.dtype() != a.dtype() {
                return Err(OpsError::DTypeMismatch {
                    op: OP,
                    a: a.dtype(),
                    b: b.dtype(),
                }
                .into());
            }
            if same_storage(a, b) {
                return Err(OpsError::Param {
                    op: OP,
                    msg: "the two input blocks share storage".into(),
                }
                .into());
            }
            let ci = ad[1] + b.dims()[1];
            if ws.dims() != [b.dims()[1], ci, 1, 1, 1] {
                return Err(shape_err(
                    OP,
                    format!("the side weight must be [{}, {ci}, 1, 1, 1]", b.dims()[1]),
                    &[ws.dims()],
                ));
            }
            b.dims()[1]
        }
        None => 0,
    };
    let ci = ad[1] + cb;
    let kernel = [wd[2], wd[3], wd[4]];
    if wd[0] != ad[1] || wd[1] != ci {
        return Err(shape_err(OP, format!("in place, the weight must be [{}, {ci}, k, k, k] (output channels = the first block's)", ad[1]), &[ad, wd]));
    }
    if p.stride != [1; 3] || (0..3).any(|i| kernel[i] != 2 * p.padding[i] + 1) {
        return Err(OpsError::Param { op: OP, msg: format!("in place needs stride 1 and padding (k - 1) / 2 (kernel {kernel:?}, stride {:?}, padding {:?})", p.stride, p.padding) }.into());
    }
    let input = [ad[2], ad[3], ad[4]];
    Ok(ConvGeom {
        n: ad[0],
        ci,
        co: ad[1],
        input,
        kernel,
        stride: [1; 3],
        padding: p.padding,
        output: input,
    })
}

/// In-place `conv3d(x, w)` for inference: a "same" convolution (stride 1, padding (k - 1) / 2) with as many
/// output as input channels, written over `x`, which saves an activation-sized buffer. Same results as
/// [`conv3d`]. `x` must be a tensor nothing else reads (as [`crate::instance_norm_`]); refuses tensors that
/// track gradients, non-contiguous ones, non-CPU devices and other dtypes than f32/f64.
pub fn conv3d_(x: &Tensor, w: &Tensor, p: Conv3dParams) -> Result<()> {
    let g = inplace_geom(x, None, w, p)?;
    x.inplace_op1(&ConvInplace {
        b: None,
        w: w.contiguous()?,
        g,
    })
}

/// In place, for inference: with x = cat([a, b], channels), writes `a <- conv3d(x, w)` (a "same"
/// convolution with as many output channels as `a` has) and `b <- conv3d(x, w_side)` (1x1x1, as many
/// output channels as `b` has). This is the start of UNETR's decoder residual blocks (conv1 and the
/// residual projection conv3 of the skip concatenation), done without the concatenation and without new
/// activation buffers; the same results as the out-of-place ops. `a` and `b` must be tensors nothing else
/// reads, with the contract of [`conv3d_`].
pub fn conv3d_cat_(
    a: &Tensor,
    b: &Tensor,
    w: &Tensor,
    w_side: &Tensor,
    p: Conv3dParams,
) -> Result<()> {
    let g = inplace_geom(a, Some((b, w_side)), w, p)?;
    a.inplace_op1(&ConvInplace {
        b: Some((b.clone(), w_side.contiguous()?)),
        w: w.contiguous()?,
        g,
    })
}
