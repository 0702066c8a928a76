use crate::layers::{dropout, DropoutRng, LayerNorm, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};
use unetr_ops::profile::timed;

/// How patches become tokens (MONAI's `proj_type`, called `pos_embed` before MONAI 1.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProjType {
    /// Conv3d(C, hidden, kernel = stride = patch).
    Conv,
    /// Rearrange "b c (h p1) (w p2) (d p3) -> b (h w d) (p1 p2 p3 c)" then Linear.
    Perceptron,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VitConfig {
    pub in_channels: usize,
    pub img_size: [usize; 3],
    pub patch_size: [usize; 3],
    pub hidden_size: usize,
    pub mlp_dim: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub proj_type: ProjType,
    pub dropout_rate: f64,
    pub qkv_bias: bool,
}

impl VitConfig {
    /// ViT-B/16 on a 96^3 single-channel volume, as in UNETR.
    pub fn vit_b16(in_channels: usize, img_size: [usize; 3]) -> Self {
        Self {
            in_channels,
            img_size,
            patch_size: [16; 3],
            hidden_size: 768,
            mlp_dim: 3072,
            num_layers: 12,
            num_heads: 12,
            proj_type: ProjType::Conv,
            dropout_rate: 0.0,
            qkv_bias: false,
        }
    }
    /// Tokens per axis.
    pub fn grid(&self) -> [usize; 3] {
        [0, 1, 2].map(|i| self.img_size[i] / self.patch_size[i])
    }
    pub fn n_patches(&self) -> usize {
        self.grid().iter().product()
    }
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// Init of MONAI's ViT linear layers: trunc_normal(std 0.02) weights, zero bias.
fn vit_linear(i: usize, o: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let w = vb.get_with_hints((o, i), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
    let b = if bias { Some(vb.get_with_hints(o, "bias", Init::Const(0.0))?) } else { None };
    Ok(Linear::new(w, b))
}

#[derive(Debug, Clone)]
enum Proj {
    Conv { weight: Tensor, bias: Tensor },
    Perceptron(Linear),
}

#[derive(Debug, Clone)]
pub struct PatchEmbeddingBlock {
    proj: Proj,
    pub position_embeddings: Tensor,
    cfg: VitConfig,
    rng: DropoutRng,
}

impl PatchEmbeddingBlock {
    pub fn new(cfg: &VitConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let [p0, p1, p2] = cfg.patch_size;
        let patch_dim = cfg.in_channels * p0 * p1 * p2;
        let proj = match cfg.proj_type {
            ProjType::Conv => {
                // PyTorch's Conv3d default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
                let b = 1.0 / (patch_dim as f64).sqrt();
                let init = Init::Uniform { lo: -b, up: b };
                let vb = vb.pp("patch_embeddings");
                Proj::Conv {
                    weight: vb.get_with_hints((cfg.hidden_size, cfg.in_channels, p0, p1, p2), "weight", init)?,
                    bias: vb.get_with_hints(cfg.hidden_size, "bias", init)?,
                }
            }
            ProjType::Perceptron => Proj::Perceptron(vit_linear(patch_dim, cfg.hidden_size, true, vb.pp("patch_embeddings.1"))?),
        };
        let position_embeddings =
            vb.get_with_hints((1, cfg.n_patches(), cfg.hidden_size), "position_embeddings", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        Ok(Self { proj, position_embeddings, cfg: cfg.clone(), rng: rng.clone() })
    }

    /// [B, C, D, H, W] -> tokens [B, N, hidden] (position embedding added, dropout applied).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let b = x.dim(0)?;
        let [p0, p1, p2] = self.cfg.patch_size;
        let [g0, g1, g2] = self.cfg.grid();
        let tokens = match &self.proj {
            Proj::Conv { weight, bias } => {
                let p = unetr_ops::Conv3dParams { stride: self.cfg.patch_size, padding: [0; 3] };
                let dt = x.dtype();
                unetr_ops::conv3d(x, &unetr_ops::cast_to(weight, dt)?, Some(&unetr_ops::cast_to(bias, dt)?), p)?.flatten_from(2)?.transpose(1, 2)?
            }
            Proj::Perceptron(lin) => {
                let c = self.cfg.in_channels;
                // channel is the fastest index inside a patch: (p1 p2 p3 c)
                let t = x
                    .reshape(vec![b, c, g0, p0, g1, p1, g2, p2])?
                    .permute(vec![0, 2, 4, 6, 3, 5, 7, 1])?
                    .contiguous()?
                    .reshape((b, g0 * g1 * g2, p0 * p1 * p2 * c))?;
                lin.forward(&t)?
            }
        };
        let pos = unetr_ops::cast_to(&self.position_embeddings, tokens.dtype())?;
        let emb = timed("position_embedding_add", || unetr_ops::add(&tokens, &pos.broadcast_as(tokens.shape())?))?;
        dropout(&emb, self.cfg.dropout_rate, train, &self.rng)
    }
}

/// MONAI's SABlock: fused qkv projection with features ordered [q | k | v] x heads x head_dim.
#[derive(Debug, Clone)]
pub struct SABlock {
    pub qkv: Linear,
    pub out_proj: Linear,
    num_heads: usize,
    scale: f64,
    dropout_rate: f64,
    rng: DropoutRng,
}

impl SABlock {
    pub fn new(cfg: &VitConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Self {
            qkv: vit_linear(h, 3 * h, cfg.qkv_bias, vb.pp("qkv"))?,
            out_proj: vit_linear(h, h, true, vb.pp("out_proj"))?,
            num_heads: cfg.num_heads,
            scale: (cfg.head_dim() as f64).powf(-0.5),
            dropout_rate: cfg.dropout_rate,
            rng: rng.clone(),
        })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let (b, n, h) = x.dims3()?;
        let dh = h / self.num_heads;
        // "b h (qkv l d) -> qkv b l h d"
        let qkv = self.qkv.forward(x)?.reshape((b, n, 3, self.num_heads, dh))?.permute((2, 0, 3, 1, 4))?;
        // (the head split/merge copies are charged to "attention" and "heads_merge")
        let (q, k, v) = (qkv.get(0)?, qkv.get(1)?, qkv.get(2)?);
        let ctx = if train && self.dropout_rate > 0.0 {
            // Dropout on the attention weights needs the unfused path.
            let att = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * self.scale)?;
            let att = dropout(&unetr_ops::softmax_last_dim(&att)?, self.dropout_rate, train, &self.rng)?;
            att.matmul(&v.contiguous()?)?
        } else {
            unetr_ops::attention(&q, &k, &v, self.scale)?
        };
        let ctx = timed("heads_merge", || ctx.transpose(1, 2)?.reshape((b, n, h)))?;
        dropout(&self.out_proj.forward(&ctx)?, self.dropout_rate, train, &self.rng)
    }
}

#[derive(Debug, Clone)]
pub struct MlpBlock {
    pub linear1: Linear,
    pub linear2: Linear,
    dropout_rate: f64,
    rng: DropoutRng,
}

impl MlpBlock {
    pub fn new(cfg: &VitConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            linear1: vit_linear(cfg.hidden_size, cfg.mlp_dim, true, vb.pp("linear1"))?,
            linear2: vit_linear(cfg.mlp_dim, cfg.hidden_size, true, vb.pp("linear2"))?,
            dropout_rate: cfg.dropout_rate,
            rng: rng.clone(),
        })
    }
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        // nn.GELU() is the exact erf form.
        let x = self.linear1.forward(x)?;
        let x = dropout(&unetr_ops::gelu(&x)?, self.dropout_rate, train, &self.rng)?;
        dropout(&self.linear2.forward(&x)?, self.dropout_rate, train, &self.rng)
    }
}

#[derive(Debug, Clone)]
pub struct TransformerBlock {
    pub norm1: LayerNorm,
    pub attn: SABlock,
    pub norm2: LayerNorm,
    pub mlp: MlpBlock,
}

impl TransformerBlock {
    pub fn new(cfg: &VitConfig, rng: &DropoutRng, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(cfg.hidden_size, 1e-5, vb.pp("norm1"))?,
            attn: SABlock::new(cfg, rng, vb.pp("attn"))?,
            norm2: LayerNorm::new(cfg.hidden_size, 1e-5, vb.pp("norm2"))?,
            mlp: MlpBlock::new(cfg, rng, vb.pp("mlp"))?,
        })
    }
    /// Pre-norm: x + attn(norm1(x)); x + mlp(norm2(x)).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let a = self.attn.forward_t(&self.norm1.forward(x)?, train)?;
        let x = timed("residual_add", || unetr_ops::add(x, &a))?;
        let m = self.mlp.forward_t(&self.norm2.forward(&x)?, train)?;
        timed("residual_add", || unetr_ops::add(&x, &m))
    }
}

/// The encoder's outputs: the final (normed) tokens and every block's output before the final norm.
#[derive(Debug, Clone)]
pub struct VitOutput {
    pub last: Tensor,
    pub hidden_states: Vec<Tensor>,
}

#[derive(Debug, Clone)]
pub struct Vit {
    pub patch_embedding: PatchEmbeddingBlock,
    pub blocks: Vec<TransformerBlock>,
    pub norm: LayerNorm,
    pub cfg: VitConfig,
    /// Shared by every dropout of the encoder; see [`Vit::reseed_dropout`].
    pub dropout_rng: DropoutRng,
}

impl Vit {
    pub fn new(cfg: &VitConfig, vb: VarBuilder) -> Result<Self> {
        let rng = DropoutRng::new(0);
        let blocks = (0..cfg.num_layers).map(|i| TransformerBlock::new(cfg, &rng, vb.pp(format!("blocks.{i}")))).collect::<Result<_>>()?;
        Ok(Self {
            patch_embedding: PatchEmbeddingBlock::new(cfg, &rng, vb.pp("patch_embedding"))?,
            blocks,
            norm: LayerNorm::new(cfg.hidden_size, 1e-5, vb.pp("norm"))?,
            cfg: cfg.clone(),
            dropout_rng: rng,
        })
    }

    /// The dropout masks of the following training passes come from `seed` (the trainer passes one derived
    /// from the run's seed and the step, so that a resumed run draws the same masks).
    pub fn reseed_dropout(&self, seed: u64) {
        self.dropout_rng.reseed(seed);
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<VitOutput> {
        let mut h = self.patch_embedding.forward_t(x, train)?;
        let mut hidden_states = Vec::with_capacity(self.blocks.len());
        for blk in &self.blocks {
            h = blk.forward_t(&h, train)?;
            hidden_states.push(h.clone());
        }
        Ok(VitOutput { last: self.norm.forward(&h)?, hidden_states })
    }
}

impl Module for Vit {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.forward_t(x, false)?.last)
    }
}

