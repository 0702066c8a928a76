//! Analytic parameter and multiply-accumulate counts, layer by layer, from the config alone.
//!
//! Convention: one MAC = one multiply-add (FLOPs = 2 x MACs). Convs count co x out_voxels x ci x k^3,
//! transposed convs ci x in_voxels x co x k^3 (as fvcore), linear layers tokens x in x out, attention
//! 2 x heads x N^2 x head_dim (QK^T and PV). Norms are listed with one "MAC" per element (kind `Norm`)
//! so they can be included (fvcore-like) or left out (the conv/linear/attention total).

use crate::config::{DecoderKind, UnetrConfig};
use unetr_decoder::NormKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum OpKind {
    Conv,
    TransposedConv,
    Linear,
    Attention,
    Norm,
    Embedding,
}

/// The shape a layer computes on (one sample): enough to build the op in isolation (`bench ops`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum LayerShape {
    /// Conv3d from `ci` to `co` channels, cubic-or-not kernel, stride, "same"-style padding, on an input grid.
    Conv { ci: usize, co: usize, kernel: [usize; 3], stride: [usize; 3], padding: [usize; 3], input: [usize; 3] },
    /// ConvTranspose3d with kernel = stride (MONAI's up-sampling) on an input grid.
    TransposedConv { ci: usize, co: usize, kernel: [usize; 3], input: [usize; 3] },
    /// A norm over `c` channels of a grid; `leaky_relu` when a LeakyReLU follows it directly (fused).
    Norm { c: usize, grid: [usize; 3], leaky_relu: bool },
    /// A linear layer over `tokens` rows.
    Linear { tokens: usize, fan_in: usize, fan_out: usize },
    Attention { tokens: usize, heads: usize, head_dim: usize },
    Embedding { tokens: usize, dim: usize },
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerCost {
    /// MONAI module path, e.g. `decoder2.conv_block.conv1`.
    pub module: String,
    pub kind: OpKind,
    pub params: usize,
    pub macs: u64,
    pub shape: LayerShape,
}

struct Acc {
    v: Vec<LayerCost>,
    norm: NormKind,
}

fn vol(g: [usize; 3]) -> usize {
    g.iter().product()
}

impl Acc {
    fn push(&mut self, module: String, kind: OpKind, params: usize, macs: u64, shape: LayerShape) {
        self.v.push(LayerCost { module, kind, params, macs, shape });
    }
    /// A stride-1 "same" conv (MONAI pads (k - 1) / 2) with kernel k^3 on `grid`.
    fn conv(&mut self, m: String, ci: usize, co: usize, k: usize, grid: [usize; 3], bias: bool) {
        let kv = k * k * k;
        let shape = LayerShape::Conv { ci, co, kernel: [k; 3], stride: [1; 3], padding: [(k - 1) / 2; 3], input: grid };
        self.push(m, OpKind::Conv, co * ci * kv + if bias { co } else { 0 }, (co * vol(grid) * ci * kv) as u64, shape);
    }
    fn tconv(&mut self, m: String, ci: usize, co: usize, k: [usize; 3], input: [usize; 3]) {
        let kv: usize = k.iter().product();
        self.push(m, OpKind::TransposedConv, ci * co * kv, (ci * vol(input) * co * kv) as u64, LayerShape::TransposedConv { ci, co, kernel: k, input });
    }
    fn norm(&mut self, m: String, c: usize, grid: [usize; 3], leaky_relu: bool) {
        let p = if self.norm == NormKind::Batch { 2 * c } else { 0 };
        self.push(m, OpKind::Norm, p, (c * vol(grid)) as u64, LayerShape::Norm { c, grid, leaky_relu });
    }
    fn conv_block(&mut self, m: &str, ci: usize, co: usize, grid: [usize; 3], res: bool) {
        self.conv(format!("{m}.conv1"), ci, co, 3, grid, false);
        self.norm(format!("{m}.norm1"), co, grid, true);
        self.conv(format!("{m}.conv2"), co, co, 3, grid, false);
        // A basic block's second norm is followed by LeakyReLU; a residual block's by the join.
        self.norm(format!("{m}.norm2"), co, grid, !res);
        if res && ci != co {
            self.conv(format!("{m}.conv3"), ci, co, 1, grid, false);
            self.norm(format!("{m}.norm3"), co, grid, false);
        }
    }
}

/// Every layer of UNETR with its parameters, MACs and shape for one sample of `cfg.img_size`: the one
/// written-down list of the architecture that the parameter and FLOP counts and `bench ops`' shapes come
/// from (a test checks it against the model's weights, key by key).
pub fn layer_costs(cfg: &UnetrConfig) -> Vec<LayerCost> {
    let mut a = Acc { v: Vec::new(), norm: cfg.norm_name };
    let (h, m) = (cfg.hidden_size, cfg.mlp_dim);
    let tokens = cfg.feat_size();
    let n = vol(tokens);
    let patch_dim = cfg.in_channels * cfg.patch_size.iter().product::<usize>();
    let (pe, pe_shape) = match cfg.proj_type {
        unetr_vit::ProjType::Conv => (
            "vit.patch_embedding.patch_embeddings",
            LayerShape::Conv { ci: cfg.in_channels, co: h, kernel: cfg.patch_size, stride: cfg.patch_size, padding: [0; 3], input: cfg.img_size },
        ),
        unetr_vit::ProjType::Perceptron => ("vit.patch_embedding.patch_embeddings.1", LayerShape::Linear { tokens: n, fan_in: patch_dim, fan_out: h }),
    };
    a.push(pe.into(), OpKind::Linear, patch_dim * h + h, (n * patch_dim * h) as u64, pe_shape);
    a.push("vit.patch_embedding.position_embeddings".into(), OpKind::Embedding, n * h, 0, LayerShape::Embedding { tokens: n, dim: h });
    let lin = |fan_in: usize, fan_out: usize| LayerShape::Linear { tokens: n, fan_in, fan_out };
    let ln = LayerShape::Norm { c: h, grid: [n, 1, 1], leaky_relu: false };
    for i in 0..cfg.num_layers {
        let b = format!("vit.blocks.{i}");
        a.push(format!("{b}.norm1"), OpKind::Norm, 2 * h, (n * h) as u64, ln);
        a.push(format!("{b}.attn.qkv"), OpKind::Linear, 3 * h * h + if cfg.qkv_bias { 3 * h } else { 0 }, (n * h * 3 * h) as u64, lin(h, 3 * h));
        let att = LayerShape::Attention { tokens: n, heads: cfg.num_heads, head_dim: h / cfg.num_heads };
        a.push(format!("{b}.attn"), OpKind::Attention, 0, (2 * n * n * h) as u64, att);
        a.push(format!("{b}.attn.out_proj"), OpKind::Linear, h * h + h, (n * h * h) as u64, lin(h, h));
        a.push(format!("{b}.norm2"), OpKind::Norm, 2 * h, (n * h) as u64, ln);
        a.push(format!("{b}.mlp.linear1"), OpKind::Linear, h * m + m, (n * h * m) as u64, lin(h, m));
        a.push(format!("{b}.mlp.linear2"), OpKind::Linear, m * h + h, (n * m * h) as u64, lin(m, h));
    }
    a.push("vit.norm".into(), OpKind::Norm, 2 * h, (n * h) as u64, ln);

    match cfg.decoder {
        DecoderKind::Unetr => unetr_decoder_costs(&mut a, cfg),
        kind => setr_decoder_costs(&mut a, cfg, kind),
    }
    a.v
}

/// The SETR decoders' layers (see `unetr_decoder::setr`).
fn setr_decoder_costs(a: &mut Acc, cfg: &UnetrConfig, kind: DecoderKind) {
    let (h, k) = (cfg.hidden_size, cfg.out_channels);
    let c = DecoderKind::setr_channels(cfg.feature_size);
    let tokens = cfg.feat_size();
    let cnr = |a: &mut Acc, m: &str, ci: usize, co: usize, kk: usize, g: [usize; 3]| {
        a.conv(format!("{m}.conv"), ci, co, kk, g, false);
        a.norm(format!("{m}.norm"), co, g, true);
    };
    match kind {
        DecoderKind::Nup => {
            cnr(a, "decoder.proj", h, c, 1, tokens);
            a.conv("decoder.head".into(), c, k, 1, tokens, true);
        }
        DecoderKind::Pup => {
            let mut g = tokens;
            for i in 0..unetr_decoder::setr::doublings(cfg.patch_size).unwrap_or(0) {
                cnr(a, &format!("decoder.stages.{i}"), if i == 0 { h } else { c }, c, 3, g);
                g = g.map(|v| v * 2);
            }
            a.conv("decoder.head".into(), c, k, 1, g, true);
        }
        _ => {
            let half = (c / 2).max(1);
            for i in 0..4 {
                a.conv(format!("decoder.proj.{i}"), h, c, 1, tokens, false);
            }
            for i in 0..4 {
                cnr(a, &format!("decoder.streams.{i}.0"), c, half, 3, tokens);
                cnr(a, &format!("decoder.streams.{i}.1"), half, half, 3, tokens);
            }
            a.conv("decoder.head".into(), 4 * half, k, 1, cfg.img_size.map(|s| s / 4), true);
        }
    }
}

/// UNETR's decoder layers (MONAI's module names).
fn unetr_decoder_costs(a: &mut Acc, cfg: &UnetrConfig) {
    let (h, f, r) = (cfg.hidden_size, cfg.feature_size, cfg.res_block);
    let grid = |div: usize| cfg.img_size.map(|s| s / div);
    let tokens = cfg.feat_size();
    let up0 = cfg.first_up();
    a.conv_block("encoder1.layer", cfg.in_channels, f, grid(1), r);
    // encoder2: tokens -> 1/8 -> 1/4 -> 1/2; encoder3: -> 1/8 -> 1/4; encoder4: -> 1/8
    for (name, co, steps) in [("encoder2", 2 * f, 2usize), ("encoder3", 4 * f, 1), ("encoder4", 8 * f, 0)] {
        a.tconv(format!("{name}.transp_conv_init"), h, co, up0, tokens);
        let mut div = 8;
        for i in 0..steps {
            a.tconv(format!("{name}.blocks.{i}.0"), co, co, [2; 3], grid(div));
            div /= 2;
            a.conv_block(&format!("{name}.blocks.{i}.1"), co, co, grid(div), r);
        }
    }
    // decoders: 5 from the tokens to 1/8, then 4, 3, 2 doubling to full resolution
    a.tconv("decoder5.transp_conv".into(), h, 8 * f, up0, tokens);
    a.conv_block("decoder5.conv_block", 16 * f, 8 * f, grid(8), r);
    for (name, ci, co, div) in [("decoder4", 8 * f, 4 * f, 4), ("decoder3", 4 * f, 2 * f, 2), ("decoder2", 2 * f, f, 1)] {
        a.tconv(format!("{name}.transp_conv"), ci, co, [2; 3], grid(div * 2));
        a.conv_block(&format!("{name}.conv_block"), 2 * co, co, grid(div), r);
    }
    a.conv("out.conv.conv".into(), f, cfg.out_channels, 1, grid(1), true);
}

/// Parameters the forward pass uses (MONAI's `parameters()` minus unused ones; buffers excluded).
pub fn count_params(cfg: &UnetrConfig) -> usize {
    layer_costs(cfg).iter().map(|l| l.params).sum()
}

/// MACs per sample of conv, transposed conv, linear and attention layers (norms excluded).
pub fn count_macs(cfg: &UnetrConfig) -> u64 {
    layer_costs(cfg).iter().filter(|l| l.kind != OpKind::Norm).map(|l| l.macs).sum()
}
