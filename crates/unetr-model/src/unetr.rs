//! The UNETR network, as `monai.networks.nets.UNETR.forward`.

use crate::config::{DecoderKind, UnetrConfig};
use crate::error::{ModelError, Result};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use unetr_decoder::setr::{MlaDecoder, NupDecoder, PupDecoder};
use unetr_decoder::{UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock};
use unetr_vit::{Vit, VitOutput};

/// The ViT encoder and a decoder chosen by `cfg.decoder`.
#[derive(Debug, Clone)]
pub struct Unetr {
    pub vit: Vit,
    pub decoder: Decoder,
    pub cfg: UnetrConfig,
}

/// The decoder seam: UNETR's (MONAI's keys at the top level: `encoder1`, ..., `out`) or one of the SETR
/// decoders of the ablation (keys under `decoder.`).
#[derive(Debug, Clone)]
pub enum Decoder {
    Unetr(Box<UnetrDecoder>),
    Nup(NupDecoder),
    Pup(PupDecoder),
    Mla(MlaDecoder),
}

/// UNETR's CNN decoder (MONAI's module names).
#[derive(Debug, Clone)]
pub struct UnetrDecoder {
    pub encoder1: UnetrBasicBlock,
    pub encoder2: UnetrPrUpBlock,
    pub encoder3: UnetrPrUpBlock,
    pub encoder4: UnetrPrUpBlock,
    pub decoder5: UnetrUpBlock,
    pub decoder4: UnetrUpBlock,
    pub decoder3: UnetrUpBlock,
    pub decoder2: UnetrUpBlock,
    pub out: UnetOutBlock,
    cfg: UnetrConfig,
}

impl Unetr {
    pub fn new(cfg: &UnetrConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let vit = Vit::new(&cfg.vit(), vb.pp("vit"))?;
        let (h, c, k, p, n) = (cfg.hidden_size, DecoderKind::setr_channels(cfg.feature_size), cfg.out_channels, cfg.patch_size, cfg.norm_name);
        let decoder = match cfg.decoder {
            DecoderKind::Unetr => Decoder::Unetr(Box::new(UnetrDecoder::new(cfg, vb)?)),
            DecoderKind::Nup => Decoder::Nup(NupDecoder::new(h, c, k, p, n, vb.pp("decoder"))?),
            DecoderKind::Pup => Decoder::Pup(PupDecoder::new(h, c, k, p, n, vb.pp("decoder"))?),
            DecoderKind::Mla => Decoder::Mla(MlaDecoder::new(h, c, k, p, n, vb.pp("decoder"))?),
        };
        Ok(Self { vit, decoder, cfg: cfg.clone() })
    }
}

impl UnetrDecoder {
    pub fn new(cfg: &UnetrConfig, vb: VarBuilder) -> Result<Self> {
        let (f, h, n, r) = (
            cfg.feature_size,
            cfg.hidden_size,
            cfg.norm_name,
            cfg.res_block,
        );
        let up0 = cfg.first_up();
        let two = [2; 3];
        Ok(Self {
            encoder1: UnetrBasicBlock::new(cfg.in_channels, f, n, r, vb.pp("encoder1"))?,
            encoder2: UnetrPrUpBlock::new(h, 2 * f, 2, up0, n, r, vb.pp("encoder2"))?,
            encoder3: UnetrPrUpBlock::new(h, 4 * f, 1, up0, n, r, vb.pp("encoder3"))?,
            encoder4: UnetrPrUpBlock::new(h, 8 * f, 0, up0, n, r, vb.pp("encoder4"))?,
            decoder5: UnetrUpBlock::new(h, 8 * f, up0, n, r, vb.pp("decoder5"))?,
            decoder4: UnetrUpBlock::new(8 * f, 4 * f, two, n, r, vb.pp("decoder4"))?,
            decoder3: UnetrUpBlock::new(4 * f, 2 * f, two, n, r, vb.pp("decoder3"))?,
            decoder2: UnetrUpBlock::new(2 * f, f, two, n, r, vb.pp("decoder2"))?,
            out: UnetOutBlock::new(f, cfg.out_channels, vb.pp("out"))?,
            cfg: cfg.clone(),
        })
    }

    /// From the encoder's outputs to logits; `x` is the input (encoder1 reads it). `keep(name, tensor,
    /// moved_ms)` records each module's output (see `Unetr::run`).
    fn forward(&self, x: &Tensor, vit: VitOutput, proj: &dyn Fn(&Tensor) -> Result<Tensor>, train: bool, keep: &mut dyn FnMut(&str, &Tensor, f64)) -> Result<Tensor> {
        // Inference runs the decoders in the storage of their inputs; the skips are made here and moved in.
        let up = |d: &UnetrUpBlock, x: Tensor, skip: Tensor| {
            if train {
                d.forward_t(&x, skip, true)
            } else {
                d.infer(x, || Ok(skip))
            }
        };
        let [s2, s3, s4] = self.cfg.skip_layers();
        // The decoder path is ordered so each large activation is dropped as soon as it was used; the skips
        // and the decoder outputs move into the up blocks, which free them (training) or compute in their
        // storage (inference).
        let enc4 = self.encoder4.forward_t(&proj(&vit.hidden_states[s4])?, train)?;
        keep("encoder4", &enc4, 0.0);
        let dec3 = up(&self.decoder5, proj(&vit.last)?, enc4)?;
        keep("decoder5", &dec3, 0.0);
        let enc3 = self.encoder3.forward_t(&proj(&vit.hidden_states[s3])?, train)?;
        keep("encoder3", &enc3, 0.0);
        let dec2 = up(&self.decoder4, dec3, enc3)?;
        keep("decoder4", &dec2, 0.0);
        let enc2 = self.encoder2.forward_t(&proj(&vit.hidden_states[s2])?, train)?;
        keep("encoder2", &enc2, 0.0);
        drop(vit);
        let dec1 = up(&self.decoder3, dec2, enc2)?;
        keep("decoder3", &dec1, 0.0);
        let out = if train {
            let enc1 = self.encoder1.forward_t(x, true)?;
            keep("encoder1", &enc1, 0.0);
            let out = self.decoder2.forward_t(&dec1, enc1, true)?;
            keep("decoder2", &out, 0.0);
            out
        } else {
            // Up-sampling first frees dec1 before encoder1's 96^3 activations exist (the forward's peak).
            let t0 = std::time::Instant::now();
            let mut up_ms = 0.0;
            let out = self.decoder2.infer(dec1, || {
                up_ms = t0.elapsed().as_secs_f64() * 1e3;
                let enc1 = self.encoder1.forward_t(x, false)?;
                keep("encoder1", &enc1, -up_ms);
                Ok(enc1)
            })?;
            keep("decoder2", &out, up_ms);
            out
        };
        let logits = self.out.forward(&out)?;
        keep("out", &logits, 0.0);
        Ok(logits)
    }
}

/// Named intermediate activations (for parity tests and debugging), in forward order.
pub type Features = Vec<(String, Tensor)>;

impl Unetr {
    /// Checks that x is [B, in_channels, img_size...] and says what would fit otherwise.
    pub fn check_input(&self, x: &Tensor) -> Result<()> {
        let c = &self.cfg;
        let d = x.dims();
        let why = if d.len() != 5 {
            Some("expected rank 5 (N, C, D, H, W)".to_string())
        } else if d[0] == 0 {
            Some("empty batch".to_string())
        } else if d[1] != c.in_channels {
            Some(format!(
                "the model takes {} input channel(s), got {}",
                c.in_channels, d[1]
            ))
        } else if d[2..] != c.img_size {
            Some(format!(
                "spatial size must equal img_size {:?} (the position embedding has a fixed token grid {:?}); \
                 crop or pad to it, or run sliding-window inference with roi {:?}",
                c.img_size,
                c.feat_size(),
                c.img_size
            ))
        } else if !x.dtype().is_float() {
            Some(format!("input dtype {:?} is not a float type", x.dtype()))
        } else {
            None
        };
        match why {
            Some(why) => Err(ModelError::Input {
                got: d.to_vec(),
                why,
            }),
            None => Ok(()),
        }
    }

    /// [B, N, hidden] tokens -> [B, hidden, gd, gh, gw] (MONAI's proj_feat).
    fn proj_feat(&self, x: &Tensor) -> Result<Tensor> {
        let [a, b, c] = self.cfg.feat_size();
        let bs = x.dim(0)?;
        Ok(unetr_ops::profile::timed("proj_feat", || x.reshape((bs, a, b, c, self.cfg.hidden_size))?.permute((0, 4, 1, 2, 3))?.contiguous())?)
    }

    /// Logits [B, out_channels, D, H, W]. `train` switches dropout and batch-norm statistics.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.run(x, train, None, None)
    }

    /// The device the weights live on (inputs must be there too).
    pub fn device(&self) -> &candle_core::Device {
        self.vit.patch_embedding.position_embeddings.device()
    }

    /// Logits plus every named intermediate (as MONAI's module names).
    pub fn forward_features(&self, x: &Tensor) -> Result<(Tensor, Features)> {
        let mut f = Vec::new();
        let y = self.run(x, false, Some(&mut f), None)?;
        Ok((y, f))
    }

    /// Inference logits plus the wall time (ms) of each top-level module, in forward order. The decoder
    /// path interleaves encoders and decoders, so each time covers exactly that module's own work.
    pub fn forward_profiled(&self, x: &Tensor) -> Result<(Tensor, Vec<(String, f64)>)> {
        let mut t = Vec::new();
        let y = self.run(x, false, None, Some(&mut t))?;
        Ok((y, t))
    }

    fn run(&self, x: &Tensor, train: bool, mut sink: Option<&mut Features>, mut times: Option<&mut Vec<(String, f64)>>) -> Result<Tensor> {
        self.check_input(x)?;
        let mut last = std::time::Instant::now();
        // `moved_ms`: time of this module's work done before the previous module was recorded (positive), or
        // of a later module's work recorded with this one (negative).
        let mut keep = |name: &str, t: &Tensor, moved_ms: f64| {
            if !name.starts_with("vit.blocks") {
                if let Some(ts) = times.as_mut() {
                    ts.push((name.to_string(), last.elapsed().as_secs_f64() * 1e3 + moved_ms));
                    last = std::time::Instant::now();
                }
            }
            if let Some(s) = sink.as_mut() {
                // A copy: inference overwrites the skips in place (`UnetrUpBlock::infer`).
                if let Ok(c) = t.copy() {
                    s.push((name.to_string(), c));
                }
            }
        };
        let vit = self.vit.forward_t(x, train)?;
        for (i, h) in vit.hidden_states.iter().enumerate() {
            keep(&format!("vit.blocks.{i}"), h, 0.0);
        }
        keep("vit", &vit.last, 0.0);
        let proj = |t: &Tensor| self.proj_feat(t);
        let logits = match &self.decoder {
            Decoder::Unetr(d) => return d.forward(x, vit, &proj, train, &mut keep),
            Decoder::Nup(d) => d.forward_t(&proj(&vit.last)?, train)?,
            Decoder::Pup(d) => d.forward_t(&proj(&vit.last)?, train)?,
            Decoder::Mla(d) => {
                let [a, b, c] = self.cfg.mla_layers();
                let levels = [proj(&vit.hidden_states[a])?, proj(&vit.hidden_states[b])?, proj(&vit.hidden_states[c])?, proj(&vit.last)?];
                drop(vit);
                d.forward_t(&levels, train)?
            }
        };
        keep("decoder", &logits, 0.0);
        Ok(logits)
    }
}
