//! Transforms on channel-first samples, as MONAI's dictionary transforms on {"image", "label"}:
//! deterministic ones (orientation, intensity scaling, padding) and random ones driven by a seeded RNG
//! (crops, flips, intensity jitter). Spatial transforms record what they did, so a prediction on the
//! transformed grid maps back to the original one ([`Sample::invert`]).

use crate::datalist::Item;
use crate::error::{ferr, DataError, Result};
use crate::nifti::{read_nifti, Affine, Header, ReadOptions, Volume};
use rand::Rng;
use std::path::PathBuf;
use rand_chacha::ChaCha8Rng;

/// One spatial step, enough to undo it.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// new axis `a` = old axis `perm[a]`, flipped when `flip[a]`; `dims` = the old spatial size.
    Orient { perm: [usize; 3], flip: [bool; 3], dims: [usize; 3] },
    /// The sample is old[start .. start + new dims]; negative starts mean padding.
    Crop { start: [isize; 3], dims: [usize; 3] },
    /// Resampled from `dims` voxels of spacing `from` to spacing `to` (axis-aligned).
    Spacing { from: [f64; 3], to: [f64; 3], dims: [usize; 3] },
}

/// Per output index along one axis: (i0, i1, weight of i1) for linear interpolation at j * ratio, with the
/// border clamped (MONAI's padding_mode="border").
fn linear_taps(out_len: usize, in_len: usize, ratio: f64) -> Vec<(usize, usize, f32)> {
    (0..out_len)
        .map(|j| {
            let x = (j as f64 * ratio).clamp(0.0, (in_len - 1) as f64);
            let i0 = x.floor() as usize;
            let i1 = (i0 + 1).min(in_len - 1);
            (i0, i1, (x - i0 as f64) as f32)
        })
        .collect()
}

/// Nearest index at j * ratio, exact ties to even. (MONAI resamples through a float32 grid, so its ties fall
/// either way by rounding noise; everything off a tie matches.)
fn nearest_taps(out_len: usize, in_len: usize, ratio: f64) -> Vec<(usize, usize, f32)> {
    (0..out_len)
        .map(|j| {
            let x = j as f64 * ratio;
            let r = x.round_ties_even().clamp(0.0, (in_len - 1) as f64) as usize;
            (r, r, 0.0)
        })
        .collect()
}

/// Separable resampling of [c, d] along each axis with the given taps.
fn resample(src: &[f32], c: usize, d: [usize; 3], taps: &[Vec<(usize, usize, f32)>; 3]) -> Vec<f32> {
    let mut cur = src.to_vec();
    let mut dims = d;
    for ax in 0..3 {
        let nd = {
            let mut n = dims;
            n[ax] = taps[ax].len();
            n
        };
        let mut out = vec![0f32; c * vol(nd)];
        let (outer, inner) = (dims[..ax].iter().product::<usize>() * c, dims[ax + 1..].iter().product::<usize>());
        for o in 0..outer {
            for (j, &(i0, i1, w)) in taps[ax].iter().enumerate() {
                let s0 = &cur[(o * dims[ax] + i0) * inner..][..inner];
                let s1 = &cur[(o * dims[ax] + i1) * inner..][..inner];
                let dst = &mut out[(o * nd[ax] + j) * inner..][..inner];
                for ((y, &a), &b) in dst.iter_mut().zip(s0).zip(s1) {
                    *y = a + (b - a) * w;
                }
            }
        }
        cur = out;
        dims = nd;
    }
    cur
}

/// Interpolation of a resampled key (MONAI's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interp {
    /// Linear along each axis ("bilinear" in MONAI also for 3D).
    Bilinear,
    Nearest,
}

/// `RandCropByPosNegLabeld`'s arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct PosNegCrop {
    pub roi: [usize; 3],
    pub pos: f64,
    pub neg: f64,
    pub num_samples: usize,
    /// With `image_key`: background centres only where some image channel is above this.
    pub image_threshold: Option<f32>,
    pub allow_smaller: bool,
}

/// `CropForegroundd`'s arguments (defaults as MONAI 1.6's).
#[derive(Debug, Clone, PartialEq)]
pub struct ForegroundCrop {
    pub margin: [usize; 3],
    /// `select_fn`: voxels above this (MONAI's `is_positive`: 0).
    pub threshold: f32,
    pub allow_smaller: bool,
    pub k_divisible: [usize; 3],
}

impl Default for ForegroundCrop {
    fn default() -> Self {
        Self { margin: [0; 3], threshold: 0.0, allow_smaller: false, k_divisible: [1; 3] }
    }
}

/// Image [C, i, j, k] and optional label [1, i, j, k] on the same grid.
#[derive(Debug, Clone)]
pub struct Sample {
    pub image: Vec<f32>,
    pub channels: usize,
    pub label: Option<Vec<f32>>,
    pub dims: [usize; 3],
    pub affine: Affine,
    pub applied: Vec<Applied>,
    /// The original header (for writing predictions with the input's geometry).
    pub header: Header,
    /// The (first) file the sample was read from, for errors.
    pub source: PathBuf,
    /// Transforms refuse to make a sample larger than this (f32 bytes of image and label together): the
    /// memory limit it was read under.
    pub max_bytes: usize,
}

fn vol(d: [usize; 3]) -> usize {
    d[0] * d[1] * d[2]
}

/// Loads an item: modalities stacked as channels, the label checked against the image grid.
pub fn load_item(item: &Item, opts: &ReadOptions) -> Result<Sample> {
    let mut header: Option<Header> = None;
    let mut image = Vec::new();
    let mut channels = 0;
    for p in &item.image {
        let v = read_nifti(p, opts)?;
        if let Some(h) = &header {
            if h.dims != v.header.dims || !affine_close(&h.affine, &v.header.affine) {
                return Err(ferr(p, format!("modality grid {:?} / affine differs from {} ({:?})", v.header.dims, item.image[0].display(), h.dims)));
            }
        } else {
            header = Some(v.header.clone());
        }
        channels += v.header.channels;
        image.extend_from_slice(&v.data);
    }
    let header = header.ok_or_else(|| DataError::Invalid("item without image".into()))?;
    let label = match &item.label {
        None => None,
        Some(p) => {
            let l = read_nifti(p, opts)?;
            if l.header.dims != header.dims || l.header.channels != 1 {
                return Err(ferr(p, format!("label shape {:?} x {} does not match image shape {:?}", l.header.dims, l.header.channels, header.dims)));
            }
            if !affine_close(&l.header.affine, &header.affine) {
                return Err(ferr(p, "label affine differs from the image's: not on the same grid"));
            }
            if let Some(x) = l.data.iter().find(|x| !(x.fract() == 0.0 && **x >= 0.0)) {
                return Err(ferr(p, format!("label holds {x}: labels must be non-negative integers")));
            }
            Some(l.data)
        }
    };
    Ok(Sample { image, channels, label, dims: header.dims, affine: header.affine, applied: Vec::new(), header, source: item.image[0].clone(), max_bytes: opts.max_bytes })
}

fn affine_close(a: &Affine, b: &Affine) -> bool {
    a.iter().flatten().zip(b.iter().flatten()).all(|(x, y)| (x - y).abs() <= 1e-3 * (1.0 + x.abs()))
}

/// MONAI's default `labels` of Orientation: per world axis, the letter of its negative and of its positive
/// direction (RAS+ world coordinates).
pub const RAS_LABELS: [[char; 2]; 3] = [['L', 'R'], ['P', 'A'], ['I', 'S']];

/// (world axis, direction) per voxel axis of an orientation code such as "RAS" or "LPS", read with `labels`.
fn parse_axcodes_with(axcodes: &str, labels: &[[char; 2]; 3]) -> Result<[(usize, f64); 3]> {
    let target: Vec<(usize, f64)> = axcodes
        .to_ascii_uppercase()
        .chars()
        .map(|c| {
            (0..3).find_map(|w| {
                if c == labels[w][1].to_ascii_uppercase() {
                    Some((w, 1.0))
                } else if c == labels[w][0].to_ascii_uppercase() {
                    Some((w, -1.0))
                } else {
                    None
                }
            })
        })
        .collect::<Option<_>>()
        .unwrap_or_default();
    let mut seen = [false; 3];
    target.iter().for_each(|&(w, _)| seen[w] = true);
    if target.len() != 3 || seen != [true; 3] {
        let pairs: Vec<String> = labels.iter().map(|l| format!("{}/{}", l[0], l[1])).collect();
        return Err(DataError::Invalid(format!("orientation code {axcodes:?}: need one letter of each pair {}", pairs.join(", "))));
    }
    Ok([target[0], target[1], target[2]])
}

fn parse_axcodes(axcodes: &str) -> Result<[(usize, f64); 3]> {
    parse_axcodes_with(axcodes, &RAS_LABELS)
}

/// Whether `axcodes` is a valid orientation code under `labels`.
pub fn check_axcodes_with(axcodes: &str, labels: &[[char; 2]; 3]) -> Result<()> {
    parse_axcodes_with(axcodes, labels).map(|_| ())
}

/// Whether `axcodes` is a valid orientation code.
pub fn check_axcodes(axcodes: &str) -> Result<()> {
    parse_axcodes(axcodes).map(|_| ())
}

/// Copies [c, d] -> [c, d'] with new axis a = old axis perm[a] (flipped when flip[a]).
fn permute_flip(src: &[f32], c: usize, dims: [usize; 3], perm: [usize; 3], flip: [bool; 3]) -> (Vec<f32>, [usize; 3]) {
    let nd = [dims[perm[0]], dims[perm[1]], dims[perm[2]]];
    let ostride = [dims[1] * dims[2], dims[2], 1];
    let mut out = vec![0f32; src.len()];
    let n = vol(dims);
    for ch in 0..c {
        let (s, d) = (&src[ch * n..(ch + 1) * n], &mut out[ch * n..(ch + 1) * n]);
        let mut o = 0;
        for a in 0..nd[0] {
            for b in 0..nd[1] {
                for e in 0..nd[2] {
                    let idx = [a, b, e];
                    let mut off = 0;
                    for ax in 0..3 {
                        let v = if flip[ax] { nd[ax] - 1 - idx[ax] } else { idx[ax] };
                        off += v * ostride[perm[ax]];
                    }
                    d[o] = s[off];
                    o += 1;
                }
            }
        }
    }
    (out, nd)
}

impl Sample {
    /// A sample on `header`'s grid (channels from the header) read from `source`, under the default memory
    /// limit of [`ReadOptions`].
    pub fn new(image: Vec<f32>, label: Option<Vec<f32>>, header: Header, source: impl Into<PathBuf>) -> Self {
        Self {
            image,
            channels: header.channels,
            label,
            dims: header.dims,
            affine: header.affine,
            applied: Vec::new(),
            header,
            source: source.into(),
            max_bytes: ReadOptions::default().max_bytes,
        }
    }

    /// Errors unless a sample of `dims` (this sample's channels and label) fits under `max_bytes`; `what`
    /// names the transform and its argument.
    pub fn check_size(&self, dims: [usize; 3], what: &str) -> Result<()> {
        let planes = self.channels + self.label.is_some() as usize;
        let bytes = dims.iter().try_fold(4 * planes, |a, &d| a.checked_mul(d)).unwrap_or(usize::MAX);
        if bytes > self.max_bytes {
            return Err(ferr(
                &self.source,
                format!(
                    "{what} makes {dims:?} voxels x {planes} plane(s) = {:.1} GiB as f32, over the memory limit of {:.1} GiB (memory_limit in the config, --memory-limit on the command line)",
                    bytes as f64 / (1u64 << 30) as f64,
                    self.max_bytes as f64 / (1u64 << 30) as f64
                ),
            ));
        }
        Ok(())
    }
    pub fn label_ref(&self) -> Option<&[f32]> {
        self.label.as_deref()
    }

    /// Reorients the voxel axes to RAS+ (MONAI's `Orientation(axcodes="RAS")`): axes permuted and flipped,
    /// affine updated so every voxel keeps its world position.
    pub fn orient_ras(self) -> Self {
        self.orient("RAS").expect("RAS is a valid code")
    }

    /// MONAI's `Orientation(axcodes)` for any code of three letters from L/R, P/A, I/S (voxel axis a then
    /// increases towards the world direction of letter a).
    pub fn orient(self, axcodes: &str) -> Result<Self> {
        self.orient_with(axcodes, &RAS_LABELS)
    }

    /// `Orientation(axcodes, labels)`: the letters of `axcodes` read with MONAI's `labels` (per world axis,
    /// the letters of its negative and positive direction).
    pub fn orient_with(mut self, axcodes: &str, labels: &[[char; 2]; 3]) -> Result<Self> {
        let target = parse_axcodes_with(axcodes, labels)?;
        let a = self.affine;
        let mut perm = [0; 3];
        let mut flip = [false; 3];
        let mut used = [false; 3];
        // Per output axis, the unused voxel axis pointing most along its world axis (each used once).
        for (ax, &(w, sign)) in target.iter().enumerate() {
            let v = (0..3).filter(|&v| !used[v]).max_by(|&x, &y| a[w][x].abs().total_cmp(&a[w][y].abs())).unwrap();
            used[v] = true;
            perm[ax] = v;
            flip[ax] = a[w][v] * sign < 0.0;
        }
        if perm == [0, 1, 2] && flip == [false; 3] {
            return Ok(self);
        }
        let old = self.dims;
        let (img, nd) = permute_flip(&self.image, self.channels, old, perm, flip);
        self.image = img;
        self.label = self.label.map(|l| permute_flip(&l, 1, old, perm, flip).0);
        // new voxel index n_a maps to old index perm[a] = flip ? (d-1-n_a) : n_a.
        let mut na = [[0.0; 4]; 3];
        for r in 0..3 {
            na[r][3] = a[r][3];
            for ax in 0..3 {
                let col = a[r][perm[ax]];
                if flip[ax] {
                    na[r][ax] = -col;
                    na[r][3] += col * (old[perm[ax]] as f64 - 1.0);
                } else {
                    na[r][ax] = col;
                }
            }
        }
        self.affine = na;
        self.dims = nd;
        self.applied.push(Applied::Orient { perm, flip, dims: old });
        Ok(self)
    }

    /// MONAI's `Spacing(pixdim, mode=("bilinear", "nearest"))` for axis-aligned grids (after `orient_ras`):
    /// the first voxel keeps its world position, the output has round((n - 1) * old / new + 1) voxels per axis (halves to even, as numpy),
    /// images are interpolated trilinearly and labels by nearest neighbour, borders clamped. Recorded for
    /// inversion. Oblique affines are treated as if axis-aligned (their column norms give the spacing).
    /// The output size is checked against the sample's memory limit before anything is allocated.
    pub fn resample_spacing(self, pixdim: [f64; 3]) -> Result<Self> {
        self.resample_spacing_with(pixdim, Interp::Bilinear, Interp::Nearest)
    }

    /// `Spacing(pixdim, mode=(image, label))` with each key's interpolation.
    pub fn resample_spacing_with(mut self, pixdim: [f64; 3], image_mode: Interp, label_mode: Interp) -> Result<Self> {
        let from = crate::nifti::spacing(&self.affine);
        if (0..3).all(|a| (from[a] - pixdim[a]).abs() < 1e-6 * pixdim[a]) {
            return Ok(self);
        }
        let d = self.dims;
        // numpy's round (half to even), as MONAI's compute_shape_offset.
        let nd = [0, 1, 2].map(|a| ((d[a] - 1) as f64 * from[a] / pixdim[a] + 1.0).round_ties_even().clamp(1.0, 1e15) as usize);
        self.check_size(nd, &format!("Spacing from {from:?} mm to pixdim {pixdim:?} mm"))?;
        let taps = |m: Interp| -> [Vec<_>; 3] {
            match m {
                Interp::Bilinear => [0, 1, 2].map(|a| linear_taps(nd[a], d[a], pixdim[a] / from[a])),
                Interp::Nearest => [0, 1, 2].map(|a| nearest_taps(nd[a], d[a], pixdim[a] / from[a])),
            }
        };
        self.image = resample(&self.image, self.channels, d, &taps(image_mode));
        self.label = self.label.map(|l| resample(&l, 1, d, &taps(label_mode)));
        for r in 0..3 {
            for a in 0..3 {
                self.affine[r][a] *= pixdim[a] / from[a];
            }
        }
        self.dims = nd;
        self.applied.push(Applied::Spacing { from, to: pixdim, dims: d });
        Ok(self)
    }

    /// MONAI's `ScaleIntensityRange(a_min, a_max, b_min, b_max, clip)` on the image.
    pub fn scale_intensity_range(mut self, a_min: f32, a_max: f32, b_min: f32, b_max: f32, clip: bool) -> Self {
        let s = (b_max - b_min) / (a_max - a_min);
        for x in self.image.iter_mut() {
            let mut v = (*x - a_min) * s + b_min;
            if clip {
                v = v.clamp(b_min.min(b_max), b_max.max(b_min));
            }
            *x = v;
        }
        self
    }

    /// Crops (or pads with zeros where the box leaves the volume) the box starting at `start` of size `size`.
    pub fn crop(mut self, start: [isize; 3], size: [usize; 3]) -> Self {
        let old = self.dims;
        let cut = |src: &[f32], c: usize| {
            let mut out = vec![0f32; c * vol(size)];
            for ch in 0..c {
                for a in 0..size[0] {
                    let ia = start[0] + a as isize;
                    if ia < 0 || ia >= old[0] as isize {
                        continue;
                    }
                    for b in 0..size[1] {
                        let ib = start[1] + b as isize;
                        if ib < 0 || ib >= old[1] as isize {
                            continue;
                        }
                        let lo = (-start[2]).max(0) as usize;
                        let hi = ((old[2] as isize - start[2]).max(0) as usize).min(size[2]);
                        if lo >= hi {
                            continue;
                        }
                        let so = ((ch * old[0] + ia as usize) * old[1] + ib as usize) * old[2];
                        let dof = ((ch * size[0] + a) * size[1] + b) * size[2];
                        let s0 = (start[2] + lo as isize) as usize;
                        out[dof + lo..dof + hi].copy_from_slice(&src[so + s0..so + s0 + (hi - lo)]);
                    }
                }
            }
            out
        };
        self.image = cut(&self.image, self.channels);
        self.label = self.label.as_ref().map(|l| cut(l, 1));
        for r in 0..3 {
            self.affine[r][3] += (0..3).map(|c| self.affine[r][c] * start[c] as f64).sum::<f64>();
        }
        self.dims = size;
        self.applied.push(Applied::Crop { start, dims: old });
        self
    }

    /// MONAI's `SpatialPad`: pads (centred, zeros) every axis shorter than `size`.
    pub fn pad_to(self, size: [usize; 3]) -> Self {
        if (0..3).all(|a| self.dims[a] >= size[a]) {
            return self;
        }
        let new = [0, 1, 2].map(|a| self.dims[a].max(size[a]));
        let start = [0, 1, 2].map(|a| -(((new[a] - self.dims[a]) / 2) as isize));
        self.crop(start, new)
    }

    /// `RandCropByPosNegLabel(roi, pos, neg, num_samples)` without an image threshold, padding volumes
    /// smaller than the roi (see [`rand_crop_pos_neg_with`](Self::rand_crop_pos_neg_with) for MONAI's options).
    pub fn rand_crop_pos_neg(&self, roi: [usize; 3], pos: f64, neg: f64, num: usize, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        self.clone().pad_to(roi).rand_crop_pos_neg_with(&PosNegCrop { roi, pos, neg, num_samples: num, image_threshold: None, allow_smaller: false }, rng)
    }

    /// The foreground and background voxel indices crops are centred on, as MONAI's
    /// `map_binary_to_indices(label, image, image_threshold)`: foreground = label > 0; background = label 0
    /// and, with a threshold, some image channel above it (so the air around a body is never a centre).
    pub fn pos_neg_indices(&self, image_threshold: Option<f32>) -> Result<(Vec<usize>, Vec<usize>)> {
        let label = self.label.as_ref().ok_or_else(|| ferr(&self.source, "RandCropByPosNegLabel needs a label"))?;
        let n = vol(self.dims);
        let fg: Vec<usize> = label.iter().enumerate().filter(|(_, &l)| l > 0.0).map(|(i, _)| i).collect();
        let bg: Vec<usize> = match image_threshold {
            None => label.iter().enumerate().filter(|(_, &l)| l == 0.0).map(|(i, _)| i).collect(),
            Some(t) => (0..n).filter(|&i| label[i] == 0.0 && (0..self.channels).any(|c| self.image[c * n + i] > t)).collect(),
        };
        Ok((fg, bg))
    }

    /// The crop start (per axis) for a centre voxel: MONAI's `correct_crop_centers` (the centre moved into
    /// [roi / 2, size - roi + roi / 2]) then `SpatialCrop(roi_center, roi_size)`.
    pub fn crop_start(center: [usize; 3], roi: [usize; 3], dims: [usize; 3]) -> [isize; 3] {
        [0, 1, 2].map(|a| {
            let lo = roi[a] / 2;
            let hi = (dims[a] - roi[a] + roi[a] / 2).max(lo);
            (center[a].clamp(lo, hi) - lo) as isize
        })
    }

    /// MONAI's `RandCropByPosNegLabeld(spatial_size, pos, neg, num_samples, image_key, image_threshold,
    /// allow_smaller)`: each crop is centred on a foreground voxel with probability pos / (pos + neg) (on
    /// the other kind when one kind has no voxels), uniformly among them, the centre moved so the crop stays
    /// inside the volume. A volume smaller than the roi is an error, or with `allow_smaller` is not cropped
    /// along those axes (the crop is then smaller than the roi, as MONAI's).
    pub fn rand_crop_pos_neg_with(&self, c: &PosNegCrop, rng: &mut ChaCha8Rng) -> Result<Vec<Sample>> {
        let d = self.dims;
        if (0..3).any(|a| d[a] < c.roi[a]) && !c.allow_smaller {
            return Err(ferr(&self.source, format!("RandCropByPosNegLabel: spatial_size {:?} is larger than the volume {d:?} (set allow_smaller = true, or pad first with SpatialPad)", c.roi)));
        }
        let roi = [0, 1, 2].map(|a| c.roi[a].min(d[a]));
        let (fg, bg) = self.pos_neg_indices(c.image_threshold)?;
        if fg.is_empty() && bg.is_empty() {
            return Err(ferr(&self.source, "RandCropByPosNegLabel: no foreground and no background voxel to centre a crop on"));
        }
        let ratio = if fg.is_empty() { 0.0 } else if bg.is_empty() { 1.0 } else { c.pos / (c.pos + c.neg) };
        let mut out = Vec::with_capacity(c.num_samples);
        for _ in 0..c.num_samples {
            let pool = if rng.random::<f64>() < ratio { &fg } else { &bg };
            let idx = pool[rng.random_range(0..pool.len())];
            let centre = [idx / (d[1] * d[2]), (idx / d[2]) % d[1], idx % d[2]];
            out.push(self.clone().crop(Self::crop_start(centre, roi, d), roi));
        }
        Ok(out)
    }

    /// MONAI's `CropForeground(select_fn=x > 0, margin)` with MONAI's defaults (see
    /// [`crop_foreground_with`](Self::crop_foreground_with)).
    pub fn crop_foreground(self, margin: usize) -> Self {
        self.crop_foreground_with(&ForegroundCrop { margin: [margin; 3], ..Default::default() })
    }

    /// MONAI's `CropForegroundd(source_key="image", select_fn, margin, allow_smaller, k_divisible)` on image
    /// and label: the bounding box of voxels where some image channel is above the threshold, grown by
    /// `margin`; with `allow_smaller` clipped to the volume, else (MONAI's default since 1.5) kept whole, the
    /// part outside the volume padded with zeros; then grown to a multiple of `k_divisible` around its
    /// centre. Unchanged when nothing is selected. Recorded for inversion.
    pub fn crop_foreground_with(self, c: &ForegroundCrop) -> Self {
        let d = self.dims;
        let n = vol(d);
        let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
        for ch in 0..self.channels {
            for (idx, &v) in self.image[ch * n..(ch + 1) * n].iter().enumerate() {
                if v > c.threshold {
                    let p = [idx / (d[1] * d[2]), (idx / d[2]) % d[1], idx % d[2]];
                    for a in 0..3 {
                        lo[a] = lo[a].min(p[a]);
                        hi[a] = hi[a].max(p[a] + 1);
                    }
                }
            }
        }
        if lo[0] == usize::MAX {
            return self;
        }
        let mut start = [0, 1, 2].map(|a| lo[a] as isize - c.margin[a] as isize);
        let mut end = [0, 1, 2].map(|a| (hi[a] + c.margin[a]) as isize);
        if c.allow_smaller {
            start = start.map(|v| v.max(0));
            end = [0, 1, 2].map(|a| end[a].min(d[a] as isize));
        }
        for a in 0..3 {
            let size = end[a] - start[a];
            let k = c.k_divisible[a].max(1) as isize;
            let want = (size + k - 1) / k * k;
            start[a] -= (want - size) / 2;
            end[a] = start[a] + want;
        }
        self.crop(start, [0, 1, 2].map(|a| (end[a] - start[a]) as usize))
    }

    /// MONAI's `NormalizeIntensity(nonzero, channel_wise)`: (x - mean) / std (population std; std 0 -> 1),
    /// over all voxels or, with `nonzero`, over and on the non-zero voxels only.
    pub fn normalize_intensity(self, nonzero: bool, channel_wise: bool) -> Self {
        self.normalize_intensity_with(nonzero, channel_wise, None, None)
    }

    /// `NormalizeIntensity(nonzero, channel_wise, subtrahend, divisor)`: the given subtrahend / divisor
    /// (one value, or one per channel with `channel_wise`) replace the mean / standard deviation.
    pub fn normalize_intensity_with(mut self, nonzero: bool, channel_wise: bool, subtrahend: Option<&[f32]>, divisor: Option<&[f32]>) -> Self {
        let n = vol(self.dims);
        let groups: Vec<std::ops::Range<usize>> = if channel_wise { (0..self.channels).map(|c| c * n..(c + 1) * n).collect() } else { vec![0..self.image.len()] };
        for (g, r) in groups.into_iter().enumerate() {
            let pick = |v: Option<&[f32]>| v.map(|v| if v.len() == 1 { v[0] } else { v[g] } as f64);
            let xs = &mut self.image[r];
            let sel = |v: f32| !nonzero || v != 0.0;
            let (mut cnt, mut sum) = (0usize, 0f64);
            for &v in xs.iter().filter(|&&v| sel(v)) {
                cnt += 1;
                sum += v as f64;
            }
            if cnt == 0 {
                continue;
            }
            let mean = pick(subtrahend).unwrap_or(sum / cnt as f64);
            let std = match pick(divisor) {
                Some(d) => d,
                None => {
                    let m = sum / cnt as f64;
                    let var = xs.iter().filter(|&&v| sel(v)).map(|&v| (v as f64 - m).powi(2)).sum::<f64>() / cnt as f64;
                    var.sqrt()
                }
            };
            let std = if std == 0.0 { 1.0 } else { std };
            for v in xs.iter_mut().filter(|v| sel(**v)) {
                *v = ((*v as f64 - mean) / std) as f32;
            }
        }
        self
    }

    /// MONAI's `Rotate90(k, spatial_axes)` (numpy's rot90 on the two axes) on image and label; the affine
    /// is updated so voxels keep their world positions.
    pub fn rotate90(mut self, k: usize, axes: (usize, usize)) -> Self {
        for _ in 0..k % 4 {
            // rot90 once: transpose(flip(m, axes.1), swap(axes.0, axes.1)).
            let (a0, a1) = axes;
            let mut flip = [false; 3];
            flip[a1] = true;
            let d = self.dims;
            self.image = permute_flip(&self.image, self.channels, d, [0, 1, 2], flip).0;
            self.label = self.label.map(|l| permute_flip(&l, 1, d, [0, 1, 2], flip).0);
            let mut perm = [0, 1, 2];
            perm.swap(a0, a1);
            let (img, nd) = permute_flip(&self.image, self.channels, d, perm, [false; 3]);
            self.image = img;
            self.label = self.label.map(|l| permute_flip(&l, 1, d, perm, [false; 3]).0);
            // new[.., i(a0), j(a1) ..] = old[.., j, d1 - 1 - i ..]: new axis a0 walks old axis a1 backwards.
            let a = self.affine;
            let mut na = a;
            for r in 0..3 {
                na[r][a0] = -a[r][a1];
                na[r][a1] = a[r][a0];
                na[r][3] = a[r][3] + a[r][a1] * (d[a1] as f64 - 1.0);
            }
            self.affine = na;
            self.dims = nd;
        }
        self
    }

    /// `RandRotate90(prob, max_k, spatial_axes)`: k uniform in 1..=max_k (an augmentation, not recorded).
    pub fn rand_rotate90(self, prob: f64, max_k: usize, axes: (usize, usize), rng: &mut ChaCha8Rng) -> Self {
        if rng.random::<f64>() >= prob || max_k == 0 {
            return self;
        }
        let k = rng.random_range(1..=max_k);
        self.rotate90(k, axes)
    }

    /// `RandFlip(spatial_axis=axis, prob)`: a data augmentation (not recorded for inversion).
    pub fn rand_flip(self, axis: usize, prob: f64, rng: &mut ChaCha8Rng) -> Self {
        self.rand_flip_axes(&[axis], prob, rng)
    }

    /// `RandFlip(spatial_axis=[...], prob)`: all listed axes flipped together.
    pub fn rand_flip_axes(mut self, axes: &[usize], prob: f64, rng: &mut ChaCha8Rng) -> Self {
        if rng.random::<f64>() >= prob {
            return self;
        }
        let mut flip = [false; 3];
        axes.iter().for_each(|&a| flip[a] = true);
        self.image = permute_flip(&self.image, self.channels, self.dims, [0, 1, 2], flip).0;
        self.label = self.label.map(|l| permute_flip(&l, 1, self.dims, [0, 1, 2], flip).0);
        self
    }

    /// `RandScaleIntensity(factors, prob)`: x * (1 + f), f uniform in [-factors, factors].
    pub fn rand_scale_intensity(self, factors: f32, prob: f64, rng: &mut ChaCha8Rng) -> Self {
        self.rand_scale_intensity_in(-factors, factors, prob, rng)
    }

    /// `RandScaleIntensity(factors=(lo, hi), prob)`: x * (1 + f), f uniform in [lo, hi].
    pub fn rand_scale_intensity_in(mut self, lo: f32, hi: f32, prob: f64, rng: &mut ChaCha8Rng) -> Self {
        if rng.random::<f64>() < prob {
            let f = 1.0 + rng.random_range(lo..=hi);
            self.image.iter_mut().for_each(|x| *x *= f);
        }
        self
    }

    /// `RandShiftIntensity(offsets, prob)`: x + o, o uniform in [-offsets, offsets].
    pub fn rand_shift_intensity(self, offsets: f32, prob: f64, rng: &mut ChaCha8Rng) -> Self {
        self.rand_shift_intensity_in(-offsets, offsets, prob, rng)
    }

    /// `RandShiftIntensity(offsets=(lo, hi), prob)`: x + o, o uniform in [lo, hi].
    pub fn rand_shift_intensity_in(mut self, lo: f32, hi: f32, prob: f64, rng: &mut ChaCha8Rng) -> Self {
        if rng.random::<f64>() < prob {
            let o = rng.random_range(lo..=hi);
            self.image.iter_mut().for_each(|x| *x += o);
        }
        self
    }

    /// `RandSpatialCrop(roi_size, random_center=True, random_size=False)`: a crop of `roi` at a uniformly
    /// random position (the volume is first padded to `roi` where smaller).
    pub fn rand_spatial_crop(self, roi: [usize; 3], rng: &mut ChaCha8Rng) -> Self {
        let base = self.pad_to(roi);
        let start = [0, 1, 2].map(|a| rng.random_range(0..=base.dims[a] - roi[a]) as isize);
        base.crop(start, roi)
    }

    /// Maps a prediction [c, dims] on this sample's grid back to the original grid, undoing crops, pads and
    /// orientation in reverse order; voxels outside every crop get `fill`.
    pub fn invert(&self, pred: &[f32], c: usize, fill: f32) -> Volume {
        let mut data = pred.to_vec();
        let mut dims = self.dims;
        for step in self.applied.iter().rev() {
            match step {
                Applied::Crop { start, dims: old } => {
                    let mut out = vec![fill; c * vol(*old)];
                    for ch in 0..c {
                        for a in 0..dims[0] {
                            for b in 0..dims[1] {
                                for e in 0..dims[2] {
                                    let o = [start[0] + a as isize, start[1] + b as isize, start[2] + e as isize];
                                    if (0..3).all(|x| o[x] >= 0 && (o[x] as usize) < old[x]) {
                                        out[((ch * old[0] + o[0] as usize) * old[1] + o[1] as usize) * old[2] + o[2] as usize] =
                                            data[((ch * dims[0] + a) * dims[1] + b) * dims[2] + e];
                                    }
                                }
                            }
                        }
                    }
                    data = out;
                    dims = *old;
                }
                Applied::Spacing { from, to, dims: old } => {
                    // Back to the original grid: nearest for label maps (fill is used for them), linear else.
                    let taps: [Vec<_>; 3] = if c == 1 {
                        [0, 1, 2].map(|a| nearest_taps(old[a], dims[a], from[a] / to[a]))
                    } else {
                        [0, 1, 2].map(|a| linear_taps(old[a], dims[a], from[a] / to[a]))
                    };
                    data = resample(&data, c, dims, &taps);
                    dims = *old;
                }
                Applied::Orient { perm, flip, dims: old } => {
                    // Inverse: old axis perm[a] = new axis a (flipped back).
                    let mut inv = [0; 3];
                    let mut iflip = [false; 3];
                    for a in 0..3 {
                        inv[perm[a]] = a;
                        iflip[perm[a]] = flip[a];
                    }
                    let (d, nd) = permute_flip(&data, c, dims, inv, iflip);
                    debug_assert_eq!(nd, *old);
                    data = d;
                    dims = *old;
                }
            }
        }
        let mut header = self.header.clone();
        header.channels = c;
        Volume { data, header }
    }
}
