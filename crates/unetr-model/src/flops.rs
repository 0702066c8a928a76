//! Analytic parameter and multiply-accumulate counts, layer by layer, from the config alone.
//!
//! Convention: one MAC = one multiply-add (FLOPs = 2 x MACs). Convs count co x out_voxels x ci x k^3,
//! transposed convs ci x in_voxels x co x k^3 (as fvcore), linear layers tokens x in x out, attention
//! 2 x heads x N^2 x head_dim (QK^T and PV). Norms are listed with one "MAC" per element (kind `Norm`)
//! so they can be included (fvcore-like) or left out (the conv/linear/attention total).

use crate::config::UnetrConfig;
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

#[derive(Debug, Clone, serde::Serialize)]
pub struct LayerCost {
    /// MONAI module path, e.g. `decoder2.conv_block.conv1`.
    pub module: String,
    pub kind: OpKind,
    pub params: usize,
    pub macs: u64,
}

struct Acc {
    v: Vec<LayerCost>,
    norm: NormKind,
}

impl Acc {
    fn push(&mut self, module: String, kind: OpKind, params: usize, macs: u64) {
        self.v.push(LayerCost { module, kind, params, macs });
    }
    fn conv(&mut self, m: String, ci: usize, co: usize, k: usize, vol: usize, bias: bool) {
        let kv = k * k * k;
        self.push(m, OpKind::Conv, co * ci * kv + if bias { co } else { 0 }, (co * vol * ci * kv) as u64);
    }
    fn tconv(&mut self, m: String, ci: usize, co: usize, k: [usize; 3], in_vol: usize) {
        let kv: usize = k.iter().product();
        self.push(m, OpKind::TransposedConv, ci * co * kv, (ci * in_vol * co * kv) as u64);
    }
    fn norm(&mut self, m: String, c: usize, vol: usize) {
        let p = if self.norm == NormKind::Batch { 2 * c } else { 0 };
        self.push(m, OpKind::Norm, p, (c * vol) as u64);
    }
    fn conv_block(&mut self, m: &str, ci: usize, co: usize, vol: usize, res: bool) {
        self.conv(format!("{m}.conv1"), ci, co, 3, vol, false);
        self.norm(format!("{m}.norm1"), co, vol);
        self.conv(format!("{m}.conv2"), co, co, 3, vol, false);
        self.norm(format!("{m}.norm2"), co, vol);
        if res && ci != co {
            self.conv(format!("{m}.conv3"), ci, co, 1, vol, false);
            self.norm(format!("{m}.norm3"), co, vol);
        }
    }
}

/// Every layer of UNETR with its parameters and MACs for one sample of `cfg.img_size`.
pub fn layer_costs(cfg: &UnetrConfig) -> Vec<LayerCost> {
    let mut a = Acc { v: Vec::new(), norm: cfg.norm_name };
    let (h, m, f, r) = (cfg.hidden_size, cfg.mlp_dim, cfg.feature_size, cfg.res_block);
    let vol = |div: usize| cfg.img_size.iter().map(|s| s / div).product::<usize>();
    let n = cfg.feat_size().iter().product::<usize>();
    let patch_dim = cfg.in_channels * cfg.patch_size.iter().product::<usize>();
    let pe = match cfg.proj_type {
        unetr_vit::ProjType::Conv => "vit.patch_embedding.patch_embeddings",
        unetr_vit::ProjType::Perceptron => "vit.patch_embedding.patch_embeddings.1",
    };
    a.push(pe.into(), OpKind::Linear, patch_dim * h + h, (n * patch_dim * h) as u64);
    a.push("vit.patch_embedding.position_embeddings".into(), OpKind::Embedding, n * h, 0);
    for i in 0..cfg.num_layers {
        let b = format!("vit.blocks.{i}");
        a.push(format!("{b}.norm1"), OpKind::Norm, 2 * h, (n * h) as u64);
        a.push(format!("{b}.attn.qkv"), OpKind::Linear, 3 * h * h + if cfg.qkv_bias { 3 * h } else { 0 }, (n * h * 3 * h) as u64);
        a.push(format!("{b}.attn"), OpKind::Attention, 0, (2 * n * n * h) as u64);
        a.push(format!("{b}.attn.out_proj"), OpKind::Linear, h * h + h, (n * h * h) as u64);
        a.push(format!("{b}.norm2"), OpKind::Norm, 2 * h, (n * h) as u64);
        a.push(format!("{b}.mlp.linear1"), OpKind::Linear, h * m + m, (n * h * m) as u64);
        a.push(format!("{b}.mlp.linear2"), OpKind::Linear, m * h + h, (n * m * h) as u64);
    }
    a.push("vit.norm".into(), OpKind::Norm, 2 * h, (n * h) as u64);

    let up0 = cfg.first_up();
    a.conv_block("encoder1.layer", cfg.in_channels, f, vol(1), r);
    // encoder2: tokens -> 1/8 -> 1/4 -> 1/2; encoder3: -> 1/8 -> 1/4; encoder4: -> 1/8
    for (name, co, steps) in [("encoder2", 2 * f, 2usize), ("encoder3", 4 * f, 1), ("encoder4", 8 * f, 0)] {
        a.tconv(format!("{name}.transp_conv_init"), h, co, up0, n);
        let mut div = 8;
        for i in 0..steps {
            a.tconv(format!("{name}.blocks.{i}.0"), co, co, [2; 3], vol(div));
            div /= 2;
            a.conv_block(&format!("{name}.blocks.{i}.1"), co, co, vol(div), r);
        }
    }
    // decoders: 5 from the tokens to 1/8, then 4, 3, 2 doubling to full resolution
    a.tconv("decoder5.transp_conv".into(), h, 8 * f, up0, n);
    a.conv_block("decoder5.conv_block", 16 * f, 8 * f, vol(8), r);
    for (name, ci, co, div) in [("decoder4", 8 * f, 4 * f, 4), ("decoder3", 4 * f, 2 * f, 2), ("decoder2", 2 * f, f, 1)] {
        a.tconv(format!("{name}.transp_conv"), ci, co, [2; 3], vol(div * 2));
        a.conv_block(&format!("{name}.conv_block"), 2 * co, co, vol(div), r);
    }
    a.conv("out.conv.conv".into(), f, cfg.out_channels, 1, vol(1), true);
    a.v
}

/// Parameters the forward pass uses (MONAI's `parameters()` minus unused ones; buffers excluded).
pub fn count_params(cfg: &UnetrConfig) -> usize {
    layer_costs(cfg).iter().map(|l| l.params).sum()
}

/// MACs per sample of conv, transposed conv, linear and attention layers (norms excluded).
pub fn count_macs(cfg: &UnetrConfig) -> u64 {
    layer_costs(cfg).iter().filter(|l| l.kind != OpKind::Norm).map(|l| l.macs).sum()
}
