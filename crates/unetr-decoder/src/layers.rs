//! Conv / transposed conv / norm layers with MONAI's `Convolution` key layout (`<name>.conv.weight`).

use candle_core::{Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use unetr_ops::{cast_to, Conv3dParams};

/// LeakyReLU slope of MONAI's blocks.
pub const LEAKY_SLOPE: f64 = 0.01;
/// Epsilon of MONAI's norms (`InstanceNorm3d`, `BatchNorm3d`: PyTorch's default).
pub const NORM_EPS: f64 = 1e-5;

/// PyTorch's default conv init: kaiming_uniform(a = sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
fn uniform_init(fan_in: usize) -> Init {
    let b = 1.0 / (fan_in.max(1) as f64).sqrt();
    Init::Uniform { lo: -b, up: b }
}

/// Conv3d with "same" padding (k - 1) / 2 at stride 1, as MONAI's `get_conv_layer`.
#[derive(Debug, Clone)]
pub struct ConvLayer {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub params: Conv3dParams,
}

impl ConvLayer {
    /// `vb` points at the `Convolution` module; the weight lives at `conv.weight`.
    pub fn new(ci: usize, co: usize, k: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("conv");
        let init = uniform_init(ci * k * k * k);
        let weight = vb.get_with_hints((co, ci, k, k, k), "weight", init)?;
        let bias = if bias {
            Some(vb.get_with_hints(co, "bias", init)?)
        } else {
            None
        };
        let pad = (k - 1) / 2; // MONAI: (k - s + 1) // 2 with s = 1
        Ok(Self {
            weight,
            bias,
            params: Conv3dParams::new(1, pad),
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Parameters follow the input's dtype (f32 master weights in a bf16/f16 pass; the cast is differentiable).
        let dt = x.dtype();
        unetr_ops::conv3d(
            x,
            &cast_to(&self.weight, dt)?,
            self.bias
                .as_ref()
                .map(|b| cast_to(b, dt))
                .transpose()?
                .as_ref(),
            self.params,
        )
    }
    /// Whether [`forward_`](Self::forward_) can run on `x`: inference, no bias, as many output as input
    /// channels, and a tensor the in-place ops accept.
    pub fn inplace_ok(&self, x: &Tensor, pass: Pass) -> bool {
        self.bias.is_none()
            && x.rank() == 5
            && self.weight.dim(0).ok() == x.dim(1).ok()
            && inplace_ok(x, pass)
    }
    /// The forward written over `x` (inference; see `unetr_ops::conv3d_`): pass a tensor nothing else reads.
    pub fn forward_(&self, x: &Tensor) -> Result<()> {
        unetr_ops::conv3d_(x, &cast_to(&self.weight, x.dtype())?, self.params)
    }
}

/// ConvTranspose3d with kernel = stride (MONAI's up-sampling, padding 0, output padding 0), no bias.
#[derive(Debug, Clone)]
pub struct TransConvLayer {
    pub weight: Tensor,
    pub stride: [usize; 3],
}

impl TransConvLayer {
    pub fn new(ci: usize, co: usize, k: [usize; 3], vb: VarBuilder) -> Result<Self> {
        // PyTorch computes a transposed conv's fan_in from weight.size(1) = out channels.
        let init = uniform_init(co * k.iter().product::<usize>());
        let weight = vb
            .pp("conv")
            .get_with_hints((ci, co, k[0], k[1], k[2]), "weight", init)?;
        Ok(Self { weight, stride: k })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        unetr_ops::conv_transpose3d(
            x,
            &cast_to(&self.weight, x.dtype())?,
            None,
            Conv3dParams {
                stride: self.stride,
                padding: [0; 3],
            },
            [0; 3],
        )
    }
}

/// MONAI's `norm_name`: "instance" (InstanceNorm3d, affine=False) or "batch" (BatchNorm3d).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NormKind {
    #[default]
    Instance,
    Batch,
}

/// `nn.BatchNorm3d(c)` (eps 1e-5, momentum 0.1, affine) with running statistics updated in training.
#[derive(Debug, Clone)]
pub struct BatchNorm3d {
    pub weight: Tensor,
    pub bias: Tensor,
    pub running_mean: Var,
    pub running_var: Var,
    pub eps: f64,
    pub momentum: f64,
}

impl BatchNorm3d {
    pub fn new(c: usize, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(c, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(c, "bias", Init::Const(0.0))?;
        // Var::from_tensor shares storage with a VarMap-backed builder, so saving sees the updates.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(c, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(c, "running_var", Init::Const(1.0))?)?;
        Ok(Self {
            weight,
            bias,
            running_mean,
            running_var,
            eps: NORM_EPS,
            momentum: 0.1,
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // Batch norm runs in its parameters' dtype (as under PyTorch's autocast: f32 statistics).
        let dt = self.weight.dtype();
        if x.dtype() != dt {
            return self.forward_t(&x.to_dtype(dt)?, train)?.to_dtype(x.dtype());
        }
        let (y, stats) = unetr_ops::batch_norm(
            x,
            &self.running_mean.as_tensor().detach(),
            &self.running_var.as_tensor().detach(),
            Some(&self.weight),
            Some(&self.bias),
            train,
            self.momentum,
            self.eps,
        )?;
        if let Some(s) = stats {
            self.running_mean.set(&s.mean)?;
            self.running_var.set(&s.var)?;
        }
        Ok(y)
    }
}

#[derive(Debug, Clone)]
pub enum NormLayer {
    Instance,
    Batch(BatchNorm3d),
}

impl NormLayer {
    pub fn new(kind: NormKind, c: usize, vb: VarBuilder) -> Result<Self> {
        Ok(match kind {
            NormKind::Instance => NormLayer::Instance,
            NormKind::Batch => NormLayer::Batch(BatchNorm3d::new(c, vb)?),
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            NormLayer::Instance => unetr_ops::instance_norm(x, None, None, NORM_EPS),
            NormLayer::Batch(bn) => bn.forward_t(x, train),
        }
    }
    /// norm(x), then `act`; in inference (instance norm, nothing tracking gradients) in place on `x`, which
    /// saves an activation-sized buffer. Pass a tensor nothing else reads (a fresh conv output).
    pub fn forward_owned(&self, x: Tensor, act: Act, pass: Pass) -> Result<Tensor> {
        let train = pass == Pass::Train;
        if matches!(self, NormLayer::Instance) && inplace_ok(&x, pass) {
            match act {
                Act::LeakyRelu => unetr_ops::instance_norm_leaky_relu_(&x, NORM_EPS, LEAKY_SLOPE)?,
                Act::Identity => unetr_ops::instance_norm_(&x, NORM_EPS)?,
            }
            return Ok(x);
        }
        match act {
            Act::LeakyRelu => self.forward_lrelu(&x, train),
            Act::Identity => self.forward_t(&x, train),
        }
    }
    /// leaky_relu(norm(x)): one fused pass for instance norm.
    pub fn forward_lrelu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self {
            NormLayer::Instance => unetr_ops::instance_norm_leaky_relu(x, NORM_EPS, LEAKY_SLOPE),
            NormLayer::Batch(bn) => unetr_ops::leaky_relu(&bn.forward_t(x, train)?, LEAKY_SLOPE),
        }
    }
}

/// Whether an in-place op may overwrite `t`: inference, and a tensor the in-place ops accept.
pub(crate) fn inplace_ok(t: &Tensor, pass: Pass) -> bool {
    pass == Pass::Infer && unetr_ops::inplace_ok(t)
}

/// How a block runs: training (the autograd graph is kept, batch norms use batch statistics) or
/// inference (in-place ops on the activations the block itself made).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    Train,
    Infer,
}

impl Pass {
    /// candle's `forward_t(x, train)` convention.
    pub fn from_train(train: bool) -> Self {
        if train {
            Self::Train
        } else {
            Self::Infer
        }
    }
}

/// The activation after a norm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    LeakyRelu,
    Identity,
}
