//! The SETR decoders (Zheng et al., CVPR 2021) in 3D, as the UNETR paper's decoder ablation compares them
//! with UNETR's on the same ViT encoder. Each takes the encoder's token grids (`[B, hidden, g, g, g]`) and
//! returns logits at the input's resolution. The design choices the papers leave open are in
//! docs/ablation.md; in short: `channels` = 16 x feature_size (SETR's 256 at feature_size 16), the config's
//! norm (instance by default) and ReLU after each inner conv, trilinear up-sampling (align_corners=False).
//!
//! - NUP (naive up-sampling): 1x1x1 conv hidden -> channels, norm, ReLU, 1x1x1 conv -> classes, one
//!   up-sampling by the patch size.
//! - PUP (progressive up-sampling): log2(patch) stages of [3x3x3 conv, norm, ReLU, 2x up-sampling], then a
//!   1x1x1 conv -> classes.
//! - MLA (multi-level aggregation): the outputs of 4 evenly spaced transformer layers, each projected by a
//!   1x1x1 conv to `channels`, summed top-down (deepest first), each stream refined by two [3x3x3 conv to
//!   channels / 2, norm, ReLU] and up-sampled by patch / 4, the four streams concatenated, a 1x1x1 conv ->
//!   classes, and a last 4x up-sampling.

use crate::layers::{ConvLayer, NormKind, NormLayer};
use crate::upsample::upsample_trilinear;
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// conv -> norm -> ReLU, keys `<name>.conv.conv.weight` and `<name>.norm.*`.
#[derive(Debug, Clone)]
pub struct ConvNormRelu {
    pub conv: ConvLayer,
    pub norm: NormLayer,
}

impl ConvNormRelu {
    pub fn new(ci: usize, co: usize, k: usize, norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self { conv: ConvLayer::new(ci, co, k, false, vb.pp("conv"))?, norm: NormLayer::new(norm, co, vb.pp("norm"))? })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        unetr_ops::leaky_relu(&self.norm.forward_t(&self.conv.forward(x)?, train)?, 0.0)
    }
}

/// SETR-Naive.
#[derive(Debug, Clone)]
pub struct NupDecoder {
    pub proj: ConvNormRelu,
    pub head: ConvLayer,
    pub scale: [usize; 3],
}

impl NupDecoder {
    pub fn new(hidden: usize, channels: usize, classes: usize, patch: [usize; 3], norm: NormKind, vb: VarBuilder) -> Result<Self> {
        Ok(Self { proj: ConvNormRelu::new(hidden, channels, 1, norm, vb.pp("proj"))?, head: ConvLayer::new(channels, classes, 1, true, vb.pp("head"))?, scale: patch })
    }
    /// `last`: the final (normed) tokens as a grid.
    pub fn forward_t(&self, last: &Tensor, train: bool) -> Result<Tensor> {
        let y = self.head.forward(&self.proj.forward_t(last, train)?)?;
        upsample_trilinear(&y, self.scale)
    }
}

/// How many 2x stages make `patch` (a power of two per axis, the same count on every axis).
pub fn doublings(patch: [usize; 3]) -> Option<usize> {
    let n = patch[0].trailing_zeros() as usize;
    patch.iter().all(|&p| p.is_power_of_two() && p.trailing_zeros() as usize == n).then_some(n)
}

/// SETR-PUP.
#[derive(Debug, Clone)]
pub struct PupDecoder {
    pub stages: Vec<ConvNormRelu>,
    pub head: ConvLayer,
}

impl PupDecoder {
    pub fn new(hidden: usize, channels: usize, classes: usize, patch: [usize; 3], norm: NormKind, vb: VarBuilder) -> Result<Self> {
        let n = doublings(patch).ok_or_else(|| candle_core::Error::msg(format!("PUP needs a power-of-two patch size, the same on every axis; got {patch:?}")))?;
        let stages = (0..n).map(|i| ConvNormRelu::new(if i == 0 { hidden } else { channels }, channels, 3, norm, vb.pp(format!("stages.{i}")))).collect::<Result<_>>()?;
        Ok(Self { stages, head: ConvLayer::new(channels, classes, 1, true, vb.pp("head"))? })
    }
    pub fn forward_t(&self, last: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = last.clone();
        for s in &self.stages {
            x = upsample_trilinear(&s.forward_t(&x, train)?, [2; 3])?;
        }
        self.head.forward(&x)
    }
}

/// SETR-MLA.
#[derive(Debug, Clone)]
pub struct MlaDecoder {
    /// 1x1x1 projections of the 4 layers' tokens, shallowest first.
    pub proj: Vec<ConvLayer>,
    /// Per stream: two conv-norm-ReLU.
    pub streams: Vec<(ConvNormRelu, ConvNormRelu)>,
    pub head: ConvLayer,
    pub stream_scale: [usize; 3],
}

impl MlaDecoder {
    pub fn new(hidden: usize, channels: usize, classes: usize, patch: [usize; 3], norm: NormKind, vb: VarBuilder) -> Result<Self> {
        if patch.iter().any(|p| p % 4 != 0) {
            candle_core::bail!("MLA needs a patch size divisible by 4 on every axis; got {patch:?}");
        }
        let half = (channels / 2).max(1);
        let proj = (0..4).map(|i| ConvLayer::new(hidden, channels, 1, false, vb.pp(format!("proj.{i}")))).collect::<Result<_>>()?;
        let streams = (0..4)
            .map(|i| {
                let vb = vb.pp(format!("streams.{i}"));
                Ok((ConvNormRelu::new(channels, half, 3, norm, vb.pp("0"))?, ConvNormRelu::new(half, half, 3, norm, vb.pp("1"))?))
            })
            .collect::<Result<_>>()?;
        Ok(Self { proj, streams, head: ConvLayer::new(4 * half, classes, 1, true, vb.pp("head"))?, stream_scale: patch.map(|p| p / 4) })
    }
    /// `levels`: the 4 layers' token grids, shallowest first.
    pub fn forward_t(&self, levels: &[Tensor; 4], train: bool) -> Result<Tensor> {
        let p: Vec<Tensor> = self.proj.iter().zip(levels).map(|(c, x)| c.forward(x)).collect::<Result<_>>()?;
        // Top-down: each level plus the aggregate of the deeper ones.
        let mut agg: Vec<Tensor> = vec![p[3].clone()];
        for i in (0..3).rev() {
            let next = (&p[i] + agg.last().unwrap())?;
            agg.push(next);
        }
        agg.reverse();
        let outs: Vec<Tensor> = agg
            .iter()
            .zip(&self.streams)
            .map(|(a, (c1, c2))| upsample_trilinear(&c2.forward_t(&c1.forward_t(a, train)?, train)?, self.stream_scale))
            .collect::<Result<_>>()?;
        let y = self.head.forward(&Tensor::cat(&outs, 1)?)?;
        upsample_trilinear(&y, [4; 3])
    }
}
