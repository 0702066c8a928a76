//! MONAI's UNETR blocks. Every struct's fields carry the name of its key in MONAI's state dict.

use crate::layers::{inplace_ok, Act, ConvLayer, NormKind, NormLayer, Pass, TransConvLayer, LEAKY_SLOPE, NORM_EPS};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use unetr_ops::cast_to;

/// `UnetResBlock`: conv3 -> norm -> LReLU -> conv3 -> norm, + residual (1x1x1 conv3 + norm3 when the channel
/// count changes), then LReLU.
#[derive(Debug, Clone)]
pub struct UnetResBlock {
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    pub norm1: NormLayer,
    pub norm2: NormLayer,
    pub conv3: Option<(ConvLayer, NormLayer)>,
}

impl UnetResBlock {
    pub fn new(ci: usize, co: usize, k: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        let conv3 = if ci != co {
            Some((
                ConvLayer::new(ci, co, 1, false, vb.pp("conv3"))?,
                NormLayer::new(norm, co, vb.pp("norm3"))?,
            ))
        } else {
            None
        };
        Ok(Self {
            conv1: ConvLayer::new(ci, co, k, false, vb.pp("conv1"))?,
            conv2: ConvLayer::new(co, co, k, false, vb.pp("conv2"))?,
            norm1: NormLayer::new(norm, co, vb.pp("norm1"))?,
            norm2: NormLayer::new(norm, co, vb.pp("norm2"))?,
            conv3,
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x.clone(), Pass::from_train(train))
    }

    /// As `forward_t`, releasing `x` as soon as it was read (it is freed if the caller holds no other
    /// reference): the residual branch runs first. In inference the norms and the residual join work in
    /// place on tensors made here; this is what bounds the peak memory of the 96^3 decoder stage.
    pub fn run(&self, x: Tensor, pass: Pass) -> Result<Tensor> {
        // Inference with instance norms: norm2, norm3, the join and its LReLU become one in-place pass
        // (`instance_norm_add_leaky_relu_`) over the raw conv outputs, so norm3 waits for it.
        let fuse = if pass == Pass::Infer
            && matches!(self.norm2, NormLayer::Instance)
            && self.conv3.as_ref().is_none_or(|(_, n)| matches!(n, NormLayer::Instance))
        {
            End::Fused
        } else {
            End::Separate
        };
        // One input channel (encoder1 on single-channel images): the 1x1x1 projection is folded into the
        // fused end (`instance_norm_add_proj1_leaky_relu_`) and never made.
        if let Some((conv3, _)) = self.conv3.as_ref().filter(|(c, _)| {
            fuse == End::Fused
                && c.bias.is_none()
                && c.weight.dims()[1..] == [1, 1, 1, 1]
                && x.dim(1).ok() == Some(1)
                && x.is_contiguous()
        }) {
            let h = self.norm1.forward_owned(self.conv1.forward(&x)?, Act::LeakyRelu, Pass::Infer)?;
            let out = self.conv2_owned(h, End::Fused, Pass::Infer)?;
            if inplace_ok(&out, Pass::Infer) && out.dtype() == x.dtype() {
                unetr_ops::instance_norm_add_proj1_leaky_relu_(
                    &out,
                    &x,
                    &cast_to(&conv3.weight, x.dtype())?,
                    NORM_EPS,
                    LEAKY_SLOPE,
                )?;
                return Ok(out);
            }
            let residual = conv3.forward(&x)?;
            return self.end(out, residual, End::Fused, Pass::Infer);
        }
        let residual = match &self.conv3 {
            Some((conv, _)) if fuse == End::Fused => conv.forward(&x)?,
            Some((conv, norm)) => norm.forward_owned(conv.forward(&x)?, Act::Identity, pass)?,
            None => x.clone(),
        };
        let h = self.norm1.forward_owned(self.conv1.forward(&x)?, Act::LeakyRelu, pass)?;
        drop(x);
        self.finish(h, residual, fuse, pass)
    }

    /// conv2, norm2, the join with the residual and LeakyReLU; `h` is norm1's output, made by the caller.
    fn finish(&self, h: Tensor, residual: Tensor, fuse: End, pass: Pass) -> Result<Tensor> {
        let out = self.conv2_owned(h, fuse, pass)?;
        self.end(out, residual, fuse, pass)
    }

    /// conv2 on norm1's output `h`, in place when fused.
    fn conv2_owned(&self, h: Tensor, fuse: End, pass: Pass) -> Result<Tensor> {
        if fuse == End::Fused && self.conv2.inplace_ok(&h, pass) {
            self.conv2.forward_(&h)?;
            Ok(h)
        } else {
            self.conv2.forward(&h)
        }
    }

    /// norm2, the join with the residual (normalised here when fused) and LeakyReLU; `out` is conv2's output.
    fn end(&self, out: Tensor, residual: Tensor, fuse: End, pass: Pass) -> Result<Tensor> {
        let same = inplace_ok(&out, pass) && out.dtype() == residual.dtype();
        if fuse == End::Fused && same {
            unetr_ops::instance_norm_add_leaky_relu_(
                &out,
                &residual,
                self.conv3.is_some(),
                NORM_EPS,
                LEAKY_SLOPE,
            )?;
            return Ok(out);
        }
        let out = self.norm2.forward_owned(out, Act::Identity, pass)?;
        let residual = match &self.conv3 {
            Some((_, norm)) if fuse == End::Fused => norm.forward_owned(residual, Act::Identity, pass)?,
            _ => residual,
        };
        if same {
            unetr_ops::add_leaky_relu_(&out, &residual, LEAKY_SLOPE)?;
            return Ok(out);
        }
        unetr_ops::add_leaky_relu(&out, &residual, LEAKY_SLOPE)
    }
}

impl UnetResBlock {
    /// Inference on cat([a, b], channels) without the concatenation or new activation buffers, when the
    /// block has instance norms and a residual projection (decoder blocks): conv1 and the projection write
    /// over `a` and `b` (`unetr_ops::conv3d_cat_`), conv2 over conv1's output, and the end is fused. Both
    /// inputs are overwritten: pass tensors nothing else reads. Otherwise the same as `forward_owned` on
    /// the concatenation.
    pub fn infer_cat(&self, a: Tensor, b: Tensor) -> Result<Tensor> {
        let instance = matches!(
            (&self.norm1, &self.norm2),
            (NormLayer::Instance, NormLayer::Instance)
        );
        if let Some((conv3, NormLayer::Instance)) = &self.conv3 {
            let p = self.conv1.params;
            let ok = instance
                && self.conv1.bias.is_none()
                && conv3.bias.is_none()
                && inplace_ok(&a, Pass::Infer)
                && inplace_ok(&b, Pass::Infer)
                && a.dtype() == b.dtype()
                && self.conv1.weight.dim(0).ok() == a.dim(1).ok()
                && p.stride == [1; 3]
                && conv3.weight.dims()[2..] == [1, 1, 1];
            if ok {
                let dt = a.dtype();
                unetr_ops::conv3d_cat_(
                    &a,
                    &b,
                    &cast_to(&self.conv1.weight, dt)?,
                    &cast_to(&conv3.weight, dt)?,
                    p,
                )?;
                let h = self.norm1.forward_owned(a, Act::LeakyRelu, Pass::Infer)?;
                return self.finish(h, b, End::Fused, Pass::Infer);
            }
        }
        let x = unetr_ops::profile::timed("skip_concat", || Tensor::cat(&[&a, &b], 1))?;
        drop((a, b));
        self.run(x, Pass::Infer)
    }
}

/// Whether a residual block's end (norm2, the residual's norm, the join, LeakyReLU) runs as one fused
/// in-place pass (inference with instance norms) or op by op.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Fused,
    Separate,
}

/// `UnetBasicBlock`: (conv3 -> norm -> LReLU) x 2.
#[derive(Debug, Clone)]
pub struct UnetBasicBlock {
    pub conv1: ConvLayer,
    pub conv2: ConvLayer,
    pub norm1: NormLayer,
    pub norm2: NormLayer,
}

impl UnetBasicBlock {
    pub fn new(ci: usize, co: usize, k: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv1: ConvLayer::new(ci, co, k, false, vb.pp("conv1"))?,
            conv2: ConvLayer::new(co, co, k, false, vb.pp("conv2"))?,
            norm1: NormLayer::new(norm, co, vb.pp("norm1"))?,
            norm2: NormLayer::new(norm, co, vb.pp("norm2"))?,
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let pass = Pass::from_train(train);
        let h = self.norm1.forward_owned(self.conv1.forward(x)?, Act::LeakyRelu, pass)?;
        self.norm2.forward_owned(self.conv2.forward(&h)?, Act::LeakyRelu, pass)
    }
}

/// Residual or basic conv block (MONAI's `res_block` flag).
#[derive(Debug, Clone)]
pub enum ConvBlock {
    Res(UnetResBlock),
    Basic(UnetBasicBlock),
}

impl ConvBlock {
    pub fn new(ci: usize, co: usize, norm: NormKind, res: bool, vb: VarBuilder) -> Result<Self> {
        Ok(if res {
            ConvBlock::Res(UnetResBlock::new(ci, co, 3, norm, vb)?)
        } else {
            ConvBlock::Basic(UnetBasicBlock::new(ci, co, 3, norm, vb)?)
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x.clone(), Pass::from_train(train))
    }
    /// As `forward_t`, releasing `x` once read (see [`UnetResBlock::run`]).
    pub fn run(&self, x: Tensor, pass: Pass) -> Result<Tensor> {
        match self {
            ConvBlock::Res(b) => b.run(x, pass),
            ConvBlock::Basic(b) => b.forward_t(&x, pass == Pass::Train),
        }
    }
}

/// `UnetrBasicBlock` (encoder1): a conv block under the key `layer`.
#[derive(Debug, Clone)]
pub struct UnetrBasicBlock {
    pub layer: ConvBlock,
}

impl UnetrBasicBlock {
    pub fn new(ci: usize, co: usize, norm: NormKind, res: bool, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            layer: ConvBlock::new(ci, co, norm, res, vb.pp("layer"))?,
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.layer.forward_t(x, train)
    }
}

/// `UnetrPrUpBlock` (encoders 2-4): a transposed conv from the hidden size (up-sampling by `up_init`,
/// MONAI: 2), then `num_layer` x [transposed conv + conv block] (`blocks.i.0`, `blocks.i.1`), each doubling
/// the resolution.
#[derive(Debug, Clone)]
pub struct UnetrPrUpBlock {
    pub transp_conv_init: TransConvLayer,
    pub blocks: Vec<(TransConvLayer, ConvBlock)>,
}

impl UnetrPrUpBlock {
    pub fn new(
        ci: usize,
        co: usize,
        num_layer: usize,
        up_init: [usize; 3],
        norm: NormKind,
        res: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        let blocks = (0..num_layer)
            .map(|i| {
                let vb = vb.pp(format!("blocks.{i}"));
                Ok((
                    TransConvLayer::new(co, co, [2; 3], vb.pp("0"))?,
                    ConvBlock::new(co, co, norm, res, vb.pp("1"))?,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            transp_conv_init: TransConvLayer::new(ci, co, up_init, vb.pp("transp_conv_init"))?,
            blocks,
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = self.transp_conv_init.forward(x)?;
        for (up, block) in &self.blocks {
            let u = up.forward(&x)?;
            x = block.run(u, Pass::from_train(train))?;
        }
        Ok(x)
    }
}

/// `UnetrUpBlock` (decoders 2-5): transposed conv, concat with the skip (up-sampled first), conv block.
#[derive(Debug, Clone)]
pub struct UnetrUpBlock {
    pub transp_conv: TransConvLayer,
    pub conv_block: ConvBlock,
}

impl UnetrUpBlock {
    pub fn new(
        ci: usize,
        co: usize,
        up: [usize; 3],
        norm: NormKind,
        res: bool,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            transp_conv: TransConvLayer::new(ci, co, up, vb.pp("transp_conv"))?,
            conv_block: ConvBlock::new(2 * co, co, norm, res, vb.pp("conv_block"))?,
        })
    }
    /// `skip` is taken by value so that it is freed once concatenated (when the caller keeps no clone).
    pub fn forward_t(&self, x: &Tensor, skip: Tensor, train: bool) -> Result<Tensor> {
        let cat = {
            let up = self.transp_conv.forward(x)?;
            unetr_ops::profile::timed("skip_concat", || Tensor::cat(&[&up, &skip], 1))?
        };
        drop(skip);
        self.conv_block.run(cat, Pass::from_train(train))
    }

    /// Inference, as `forward_t(x, skip, false)`, computed in the storage of the up-sampled `x` and of the
    /// skip (residual conv blocks with instance norms; see `UnetResBlock::infer_cat`): no concatenation and
    /// no new activation buffers, which is what bounds the peak memory of UNETR's 96^3 stage. The skip is
    /// made by `make_skip` after `x` was up-sampled and freed (when the caller keeps no clone), so the two
    /// never coexist; its values are overwritten, so it must be a tensor nothing else reads.
    pub fn infer(&self, x: Tensor, make_skip: impl FnOnce() -> Result<Tensor>) -> Result<Tensor> {
        let up = self.transp_conv.forward(&x)?;
        drop(x);
        let skip = make_skip()?;
        match &self.conv_block {
            ConvBlock::Res(b) => b.infer_cat(up, skip),
            ConvBlock::Basic(b) => {
                let x = Tensor::cat(&[&up, &skip], 1)?;
                drop((up, skip));
                b.forward_t(&x, false)
            }
        }
    }
}

/// `UnetOutBlock`: 1x1x1 conv with bias (raw logits), key `conv.conv.{weight,bias}`.
#[derive(Debug, Clone)]
pub struct UnetOutBlock {
    pub conv: ConvLayer,
}

impl UnetOutBlock {
    pub fn new(ci: usize, co: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: ConvLayer::new(ci, co, 1, true, vb.pp("conv"))?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.conv.forward(x)
    }
}
