//! `UnetrConfig`: MONAI's `UNETR(...)` constructor arguments (JSON field names as MONAI's), plus our
//! `patch_size` and `num_layers`.

use crate::error::{ModelError, Result};
use serde::{Deserialize, Deserializer, Serialize};
use unetr_decoder::NormKind;
use unetr_vit::{ProjType, VitConfig};

/// MONAI's `UNETR(...)` arguments. In a training config's `[model]` section, `in_channels`,
/// `out_channels` and `img_size` may be left out (0): the trainer takes them from the data (channels,
/// classes) and the crop size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetrConfig {
    #[serde(default)]
    pub in_channels: usize,
    #[serde(default)]
    pub out_channels: usize,
    #[serde(default, deserialize_with = "one_or_three")]
    pub img_size: [usize; 3],
    #[serde(default = "d16")]
    pub feature_size: usize,
    #[serde(default = "d768")]
    pub hidden_size: usize,
    #[serde(default = "d3072")]
    pub mlp_dim: usize,
    #[serde(default = "d12")]
    pub num_heads: usize,
    /// MONAI < 1.3 called it `pos_embed`.
    #[serde(default = "conv", alias = "pos_embed")]
    pub proj_type: ProjType,
    #[serde(default)]
    pub norm_name: NormKind,
    #[serde(default = "yes")]
    pub res_block: bool,
    #[serde(default)]
    pub dropout_rate: f64,
    #[serde(default)]
    pub qkv_bias: bool,
    /// Not a MONAI argument (MONAI fixes 16): any multiple of 8 per axis that divides img_size.
    #[serde(default = "p16", deserialize_with = "one_or_three")]
    pub patch_size: [usize; 3],
    /// Not a MONAI argument (MONAI fixes 12): skips come from blocks L/4, L/2, 3L/4.
    #[serde(default = "d12")]
    pub num_layers: usize,
    /// Not a MONAI argument: the decoder on the ViT (MONAI's UNETR is "unetr"; "nup", "pup" and "mla" are
    /// the SETR decoders of the paper's ablation).
    #[serde(default, skip_serializing_if = "DecoderKind::is_unetr")]
    pub decoder: DecoderKind,
    /// MONAI's fixed arguments, accepted so that a config dumped from MONAI loads: must be 3 / true.
    #[serde(default = "three", skip_serializing)]
    pub spatial_dims: usize,
    #[serde(default = "yes", skip_serializing)]
    pub conv_block: bool,
}

/// Which decoder runs on the encoder's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DecoderKind {
    /// UNETR's CNN decoder with skips from layers L/4, L/2, 3L/4 (MONAI's).
    #[default]
    Unetr,
    /// SETR's naive up-sampling.
    Nup,
    /// SETR's progressive up-sampling.
    Pup,
    /// SETR's multi-level aggregation.
    Mla,
}

impl DecoderKind {
    pub fn is_unetr(&self) -> bool {
        *self == Self::Unetr
    }
    /// Channels of the SETR decoders' inner convs.
    pub fn setr_channels(feature_size: usize) -> usize {
        16 * feature_size
    }
}

fn d16() -> usize {
    16
}
fn d768() -> usize {
    768
}
fn d3072() -> usize {
    3072
}
fn d12() -> usize {
    12
}
fn three() -> usize {
    3
}
fn p16() -> [usize; 3] {
    [16; 3]
}
fn yes() -> bool {
    true
}
fn conv() -> ProjType {
    ProjType::Conv
}

fn one_or_three<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<[usize; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        One(usize),
        Three([usize; 3]),
    }
    Ok(match V::deserialize(d)? {
        V::One(v) => [v; 3],
        V::Three(v) => v,
    })
}

impl Default for UnetrConfig {
    /// MONAI's defaults with channels and image size still to be filled in (0).
    fn default() -> Self {
        Self::monai(0, 0, [0; 3])
    }
}

impl UnetrConfig {
    /// MONAI's defaults with the given channels and image size.
    pub fn monai(in_channels: usize, out_channels: usize, img_size: [usize; 3]) -> Self {
        Self {
            in_channels,
            out_channels,
            img_size,
            feature_size: 16,
            hidden_size: 768,
            mlp_dim: 3072,
            num_heads: 12,
            proj_type: ProjType::Conv,
            norm_name: NormKind::Instance,
            res_block: true,
            dropout_rate: 0.0,
            qkv_bias: false,
            patch_size: [16; 3],
            num_layers: 12,
            decoder: DecoderKind::Unetr,
            spatial_dims: 3,
            conv_block: true,
        }
    }

    /// The paper's BTCV model: 1 CT channel -> 14 classes (13 organs + background), 96^3 crops.
    pub fn btcv() -> Self {
        Self::monai(1, 14, [96; 3])
    }

    /// MSD spleen (Task09): 1 -> 2 classes, 96^3.
    pub fn msd_spleen() -> Self {
        Self::monai(1, 2, [96; 3])
    }

    /// MSD brain tumour (Task01): 4 MRI modalities -> 3 regions, 128^3 (MONAI tutorial).
    pub fn msd_brats() -> Self {
        Self::monai(4, 3, [128; 3])
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text).map_err(|e| ModelError::Config(e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let err = |m: String| Err(ModelError::Config(m));
        if self.spatial_dims != 3 {
            return err(format!("spatial_dims = {}: only 3D is supported", self.spatial_dims));
        }
        if !self.conv_block {
            return err("conv_block = false is not supported (UNETR always passes true)".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.feature_size == 0 {
            return err("in_channels, out_channels and feature_size must be positive".into());
        }
        if self.num_heads == 0 || self.hidden_size % self.num_heads != 0 {
            return err(format!("hidden_size {} must be divisible by num_heads {}", self.hidden_size, self.num_heads));
        }
        if !(self.dropout_rate.is_finite() && (0.0..1.0).contains(&self.dropout_rate)) {
            return err(format!("dropout_rate = {}: must be in [0, 1) (1 would drop everything)", self.dropout_rate));
        }
        if self.num_layers < 4 {
            return err(format!("num_layers {} must be >= 4 (skips come from blocks L/4, L/2, 3L/4)", self.num_layers));
        }
        for a in 0..3 {
            let (i, p) = (self.img_size[a], self.patch_size[a]);
            if p == 0 || p % 8 != 0 {
                return err(format!(
                    "patch_size {:?}: each side must be a multiple of 8 (the decoder rebuilds 1/8, 1/4, 1/2 and full resolution)",
                    self.patch_size
                ));
            }
            if i == 0 || i % p != 0 {
                let fit = (i / p).max(1) * p;
                return err(format!("img_size {:?} must be divisible by patch_size {:?} on every axis (axis {a}: {i} -> try {fit})", self.img_size, self.patch_size));
            }
        }
        match self.decoder {
            DecoderKind::Pup if unetr_decoder::setr::doublings(self.patch_size).is_none() => {
                err(format!("decoder \"pup\" needs a power-of-two patch size, equal on every axis (got {:?})", self.patch_size))
            }
            DecoderKind::Mla if self.patch_size.iter().any(|p| p % 4 != 0) => err(format!("decoder \"mla\" needs a patch size divisible by 4 (got {:?})", self.patch_size)),
            _ => Ok(()),
        }
    }

    /// 0-based transformer blocks whose outputs feed MLA's four streams (the last is the normed output).
    pub fn mla_layers(&self) -> [usize; 3] {
        let l = self.num_layers;
        [l / 4 - 1, l / 2 - 1, 3 * l / 4 - 1]
    }

    pub fn vit(&self) -> VitConfig {
        VitConfig {
            in_channels: self.in_channels,
            img_size: self.img_size,
            patch_size: self.patch_size,
            hidden_size: self.hidden_size,
            mlp_dim: self.mlp_dim,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            proj_type: self.proj_type,
            dropout_rate: self.dropout_rate,
            qkv_bias: self.qkv_bias,
        }
    }

    /// Token grid (img_size / patch_size).
    pub fn feat_size(&self) -> [usize; 3] {
        [0, 1, 2].map(|a| self.img_size[a] / self.patch_size[a])
    }

    /// Up-sampling from the token grid to 1/8 resolution: patch / 8 per axis (2 for MONAI's 16).
    pub fn first_up(&self) -> [usize; 3] {
        self.patch_size.map(|p| p / 8)
    }

    /// 0-based indices of the transformer blocks whose outputs feed encoders 2, 3, 4.
    pub fn skip_layers(&self) -> [usize; 3] {
        let l = self.num_layers;
        [l / 4, l / 2, 3 * l / 4]
    }
}
