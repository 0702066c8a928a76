//! Training forward and backward of the residual, up and output blocks written by hand: the forward keeps
//! only what the backward reads, or what that is cheaply recomputed from (a tape), and the backward frees
//! each kept tensor as soon as it was used, as PyTorch's autograd does; on the CPU the element-wise and
//! norm gradients are written over the gradient they come from. candle's graph keeps every intermediate
//! (the normalised tensors, the up-sampled half of the concatenation) until a whole backward ends and
//! seeds each gradient with a zero tensor; at 96^3 that is what sets a training step's peak memory.
//!
//! Used for blocks with instance norms, no conv biases (the output block's bias is allowed) and weights in
//! the input's dtype (UNETR's blocks in f32 or f64 training); [`UnetResBlock::tape_applies`] says when.
//! The gradients equal the graph's (test: `taped_blocks_match_the_graph` in this crate's tests).

use crate::blocks::{ConvBlock, UnetOutBlock, UnetResBlock, UnetrUpBlock};
use crate::layers::{ConvLayer, NormLayer, LEAKY_SLOPE, NORM_EPS as EPS};
use candle_core::backprop::GradStore;
use candle_core::{Result, Tensor};
use unetr_ops::Conv3dParams;

/// Adds `g` to the gradient of `param` in `grads`.
pub fn accumulate(grads: &mut GradStore, param: &Tensor, g: Tensor) -> Result<()> {
    let sum = match grads.get(param) {
        Some(prev) => (prev + g)?,
        None => g,
    };
    grads.insert(param, sum);
    Ok(())
}

/// What [`UnetResBlock`]'s backward reads: the input and the raw outputs of conv1 and conv2. The block's
/// output, norm1's activated output and the residual projection (conv3, 1x1x1), which the backward also
/// reads, are recomputed from them where they are needed (a norm or a pointwise conv each: cheap next to
/// the 3x3x3 convolutions), so a kept tape holds three full-size tensors fewer.
pub struct ResTape {
    x: Tensor,
    c1: Tensor,
    c2: Tensor,
    /// The block's output, when the caller still has it (a forward recomputed just before the backward).
    out: Option<Tensor>,
}

/// A conv without bias on detached weights.
fn conv(c: &ConvLayer, t: &Tensor) -> Result<Tensor> {
    unetr_ops::conv3d(t, &c.weight.detach(), None, c.params)
}

/// The block's output from the kept tensors: lrelu(norm2(c2) + (norm3(conv3(x)) or x)). On the CPU in place
/// (over conv3's output, or a copy of `c2`): one new tensor where the norms and the sum would make three;
/// the same values.
fn res_output(b: &UnetResBlock, x: &Tensor, c2: &Tensor) -> Result<Tensor> {
    let r = b.conv3.as_ref().map(|(c, _)| conv(c, x)).transpose()?;
    if c2.device().is_cpu() {
        return Ok(match r {
            // lrelu(norm3(r) + norm2(c2)): the same sum, the operands swapped.
            Some(r) => {
                unetr_ops::instance_norm_add_leaky_relu_(&r, c2, true, EPS, LEAKY_SLOPE)?;
                r
            }
            None => {
                let out = c2.copy()?;
                unetr_ops::instance_norm_add_leaky_relu_(&out, x, false, EPS, LEAKY_SLOPE)?;
                out
            }
        });
    }
    let n2 = unetr_ops::instance_norm(c2, None, None, EPS)?;
    match r {
        Some(r) => unetr_ops::add_leaky_relu(&n2, &unetr_ops::instance_norm(&r, None, None, EPS)?, LEAKY_SLOPE),
        None => unetr_ops::add_leaky_relu(&n2, x, LEAKY_SLOPE),
    }
}

/// The gradient of an instance norm's input `x` (with a LeakyReLU after it: `slope`) from its output's
/// gradient `dy`, which this consumes: on the CPU the result is written over it.
fn norm_grad(x: &Tensor, dy: Tensor, slope: Option<f64>) -> Result<Tensor> {
    if dy.device().is_cpu() {
        unetr_ops::instance_norm_backward_(x, &dy, EPS, slope)?;
        return Ok(dy);
    }
    unetr_ops::instance_norm_backward(x, &dy, EPS, slope)
}

/// The gradient of lrelu's input from its output `out` (which this consumes: on the CPU it is overwritten)
/// and the output's gradient `g`.
fn leaky_relu_grad(out: Tensor, g: &Tensor) -> Result<Tensor> {
    if out.device().is_cpu() {
        unetr_ops::leaky_relu_backward_from_output_(&out, g, LEAKY_SLOPE)?;
        return Ok(out);
    }
    unetr_ops::leaky_relu_backward_from_output(&out, g, LEAKY_SLOPE)
}

/// `a + b`, on the CPU in place over `a` (which this consumes).
fn sum_into(a: Tensor, b: &Tensor) -> Result<Tensor> {
    if a.device().is_cpu() {
        unetr_ops::add_(&a, b)?;
        return Ok(a);
    }
    a + b
}

/// `t` without its graph; `t` itself (and the graph it holds) is dropped here, not at the end of the caller's
/// scope as a shadowed binding would be.
pub fn detached(t: Tensor) -> Tensor {
    t.detach()
}

fn conv_ok(c: &ConvLayer, dt: candle_core::DType) -> bool {
    c.bias.is_none() && c.weight.dtype() == dt
}

impl UnetResBlock {
    /// Whether the hand-written training pass applies to input `x` (see the module docs).
    pub fn tape_applies(&self, x: &Tensor) -> bool {
        let dt = x.dtype();
        matches!((&self.norm1, &self.norm2), (NormLayer::Instance, NormLayer::Instance))
            && conv_ok(&self.conv1, dt)
            && conv_ok(&self.conv2, dt)
            && self.conv3.as_ref().is_none_or(|(c, n)| conv_ok(c, dt) && matches!(n, NormLayer::Instance))
    }

    /// The training forward on detached tensors; returns the output and the tape for [`ResTape::backward`].
    pub fn forward_taped(&self, x: &Tensor) -> Result<(Tensor, ResTape)> {
        // Detached weights: no op of this pass may record a graph (it would keep what the tape drops).
        let x = &x.detach();
        let c1 = conv(&self.conv1, x)?;
        let h1 = unetr_ops::instance_norm_leaky_relu(&c1, EPS, LEAKY_SLOPE)?;
        let c2 = conv(&self.conv2, &h1)?;
        drop(h1);
        let out = res_output(self, x, &c2)?;
        Ok((out, ResTape { x: x.clone(), c1, c2, out: None }))
    }
}

impl ResTape {
    /// Hands the block's output (as the forward that made this tape returned it) to the backward, which
    /// otherwise recomputes it. The backward overwrites it: give a tensor nothing else reads.
    pub fn with_output(self, out: Tensor) -> Self {
        Self { out: Some(out), ..self }
    }

    /// The gradient of the block's input given its output's `g`; the weights' gradients go into `grads`.
    /// Each kept tensor is dropped once read.
    /// Weights are read detached (no op here records a graph); their gradients are keyed by the weights.
    pub fn backward(self, b: &UnetResBlock, g: Tensor, grads: &mut GradStore) -> Result<Tensor> {
        // Detached in a call that takes `g`: a shadowed binding would keep its storage alive to the end.
        let g = detached(g);
        let ResTape { x, c1, c2, out } = self;
        // Recomputed: the same ops on the same tensors, so the output the forward returned, bit for bit.
        let out = match out {
            Some(o) => o,
            None => res_output(b, &x, &c2)?,
        };
        let gs = leaky_relu_grad(out, &g)?;
        drop(g);
        let gc2 = unetr_ops::instance_norm_backward(&c2, &gs, EPS, None)?;
        drop(c2);
        // The residual branch's gradient: through norm3 (conv3's output recomputed) or, for an identity,
        // straight to x.
        let residual = match &b.conv3 {
            Some((c3, _)) => {
                let r = conv(c3, &x)?;
                let gr = norm_grad(&r, gs, None)?;
                drop(r);
                Residual::Projected(gr)
            }
            None => Residual::Identity(gs),
        };
        // Each weight gradient before its input gradient, so that the conv's input can go first.
        let h1 = unetr_ops::instance_norm_leaky_relu(&c1, EPS, LEAKY_SLOPE)?;
        let w2 = b.conv2.weight.detach();
        accumulate(grads, &b.conv2.weight, unetr_ops::conv3d_backward_weight(&h1, &w2, &gc2, b.conv2.params)?)?;
        drop(h1);
        let gh1 = unetr_ops::conv3d_backward_input(c1.dims(), &w2, &gc2, b.conv2.params)?;
        drop(gc2);
        let gc1 = norm_grad(&c1, gh1, Some(LEAKY_SLOPE))?;
        drop(c1);
        let w1 = b.conv1.weight.detach();
        accumulate(grads, &b.conv1.weight, unetr_ops::conv3d_backward_weight(&x, &w1, &gc1, b.conv1.params)?)?;
        let x_dims = x.dims().to_vec();
        let gx = unetr_ops::conv3d_backward_input(&x_dims, &w1, &gc1, b.conv1.params)?;
        drop(gc1);
        // The input goes before the residual's input gradient is made and summed into gx.
        match (residual, &b.conv3) {
            (Residual::Projected(gr), Some((c3, _))) => {
                let w3 = c3.weight.detach();
                accumulate(grads, &c3.weight, unetr_ops::conv3d_backward_weight(&x, &w3, &gr, c3.params)?)?;
                drop(x);
                let gx3 = unetr_ops::conv3d_backward_input(&x_dims, &w3, &gr, c3.params)?;
                drop(gr);
                sum_into(gx, &gx3)
            }
            (Residual::Identity(gs), None) => {
                drop(x);
                sum_into(gx, &gs)
            }
            _ => candle_core::bail!("residual block tape does not match the block"),
        }
    }
}

/// The gradient reaching the residual join's second operand.
enum Residual {
    /// conv3's output's gradient (through norm3).
    Projected(Tensor),
    /// The input's own (identity residual).
    Identity(Tensor),
}

/// What [`UnetrUpBlock`]'s backward reads: the up-sampled input and the residual block's tape.
pub struct UpTape {
    x: Tensor,
    res: ResTape,
}

impl UnetrUpBlock {
    /// Whether the hand-written training pass applies (a residual conv block, see
    /// [`UnetResBlock::tape_applies`], and a transposed conv in the input's dtype).
    pub fn tape_applies(&self, x: &Tensor) -> bool {
        matches!(&self.conv_block, ConvBlock::Res(b) if b.tape_applies(x)) && self.transp_conv.weight.dtype() == x.dtype()
    }

    /// The training forward on detached `x` and `skip`; returns the output and the tape. `skip` is taken
    /// by value: this handle is dropped once concatenated (its memory is freed if nothing else holds it).
    pub fn forward_taped(&self, x: &Tensor, skip: Tensor) -> Result<(Tensor, UpTape)> {
        let ConvBlock::Res(b) = &self.conv_block else { candle_core::bail!("taped up block without a residual block") };
        let x = &x.detach();
        let u = unetr_ops::conv_transpose3d(x, &self.transp_conv.weight.detach(), None, self.params(), [0; 3])?;
        let cat = Tensor::cat(&[&u, &skip.detach()], 1)?;
        drop((u, skip));
        let (out, res) = b.forward_taped(&cat)?;
        Ok((out, UpTape { x: x.clone(), res }))
    }

    fn params(&self) -> Conv3dParams {
        Conv3dParams { stride: self.transp_conv.stride, padding: [0; 3] }
    }
}

impl UpTape {
    /// See [`ResTape::with_output`]: the up block's output is its residual block's.
    pub fn with_output(self, out: Tensor) -> Self {
        Self { res: self.res.with_output(out), ..self }
    }

    /// The gradients of (x, skip) given the output's `g`; the weights' gradients go into `grads`.
    pub fn backward(self, b: &UnetrUpBlock, g: Tensor, grads: &mut GradStore) -> Result<(Tensor, Tensor)> {
        let ConvBlock::Res(rb) = &b.conv_block else { candle_core::bail!("taped up block without a residual block") };
        let gcat = self.res.backward(rb, g, grads)?;
        let cu = b.transp_conv.weight.dim(1)?;
        let gu = gcat.narrow(1, 0, cu)?.contiguous()?;
        let gskip = gcat.narrow(1, cu, gcat.dim(1)? - cu)?.contiguous()?;
        drop(gcat);
        let (gx, dw) = unetr_ops::conv_transpose3d_backward(&self.x, &b.transp_conv.weight.detach(), &gu, b.params())?;
        accumulate(grads, &b.transp_conv.weight, dw)?;
        Ok((gx, gskip))
    }
}

/// What [`UnetOutBlock`]'s backward reads: its input (the 1x1x1 conv's backward needs nothing else, so the
/// tape is what a recomputation would keep).
pub struct OutTape {
    x: Tensor,
}

impl UnetOutBlock {
    /// Whether the hand-written training pass applies (a weight in the input's dtype).
    pub fn tape_applies(&self, x: &Tensor) -> bool {
        self.conv.weight.dtype() == x.dtype() && self.conv.bias.as_ref().is_none_or(|b| b.dtype() == x.dtype())
    }

    /// The training forward on detached `x`; returns the logits and the tape.
    pub fn forward_taped(&self, x: &Tensor) -> Result<(Tensor, OutTape)> {
        let x = x.detach();
        let c = &self.conv;
        let out = unetr_ops::conv3d(&x, &c.weight.detach(), c.bias.as_ref().map(Tensor::detach).as_ref(), c.params)?;
        Ok((out, OutTape { x }))
    }
}

impl OutTape {
    /// The gradient of the input given the logits' `g`; the weight's and bias's gradients go into `grads`.
    pub fn backward(self, b: &UnetOutBlock, g: Tensor, grads: &mut GradStore) -> Result<Tensor> {
        let (g, c) = (detached(g), &b.conv);
        let (gx, dw) = unetr_ops::conv3d_backward(&self.x, &c.weight.detach(), &g, c.params)?;
        drop(self.x);
        accumulate(grads, &c.weight, dw)?;
        if let Some(bias) = &c.bias {
            accumulate(grads, bias, g.sum(vec![0, 2, 3, 4])?)?;
        }
        Ok(gx)
    }
}
