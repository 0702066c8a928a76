//! Sliding-window inference with MONAI's `sliding_window_inference` semantics: windows of `roi` with
//! step roi * (1 - overlap), the last window of each axis aligned to the end, inputs smaller than the roi
//! padded symmetrically with zeros, windows run `sw_batch` at a time, outputs blended with a constant or
//! Gaussian (sigma = 0.125 roi) importance map. Memory: the output, one weight map and one batch of windows.

use candle_core::{Result, Tensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    Constant,
    Gaussian,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct SlidingWindow {
    pub roi: [usize; 3],
    pub overlap: f64,
    pub sw_batch: usize,
    pub blend: Blend,
}

impl SlidingWindow {
    /// The settings' ranges: a non-empty roi, overlap in [0, 1) (1 would never advance; a negative one
    /// leaves gaps that no window covers), at least one window per batch.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.roi.contains(&0) {
            return Err(format!("sliding window roi {:?}: every side must be positive", self.roi));
        }
        if !(self.overlap.is_finite() && (0.0..1.0).contains(&self.overlap)) {
            return Err(format!("overlap = {}: must be in [0, 1)", self.overlap));
        }
        if self.sw_batch == 0 {
            return Err("sw_batch = 0: must be at least 1".into());
        }
        Ok(())
    }
}

/// Window starts along one axis (MONAI's `_get_scan_interval` + `dense_patch_slices`; a last window that
/// would overrun the end is shifted back to end there).
pub fn starts(size: usize, roi: usize, overlap: f64) -> Vec<usize> {
    if size <= roi {
        return vec![0];
    }
    let interval = ((roi as f64 * (1.0 - overlap)) as usize).max(1);
    let n = (size - roi).div_ceil(interval) + 1;
    (0..n).map(|i| (i * interval).min(size - roi)).collect()
}

/// The importance map over one window, `[roi]` flattened.
pub fn importance_map(roi: [usize; 3], blend: Blend) -> Vec<f32> {
    let n = roi.iter().product();
    if blend == Blend::Constant {
        return vec![1.0; n];
    }
    let g = |a: usize| -> Vec<f64> {
        let sigma = 0.125 * roi[a] as f64;
        let c = (roi[a] as f64 - 1.0) / 2.0;
        (0..roi[a]).map(|i| (-0.5 * ((i as f64 - c) / sigma).powi(2)).exp()).collect()
    };
    let (x, y, z) = (g(0), g(1), g(2));
    let mut m: Vec<f64> = Vec::with_capacity(n);
    for a in &x {
        for b in &y {
            for c in &z {
                m.push(a * b * c);
            }
        }
    }
    // As MONAI: no normalisation, but weights clamped from below at max(min, 1e-3).
    let floor = m.iter().cloned().fold(f64::INFINITY, f64::min).max(1e-3);
    m.iter().map(|v| v.max(floor) as f32).collect()
}

/// Runs `predict` ([n, C, roi] -> [n, K, roi]) over a [1, C, D, H, W] volume; returns [1, K, D, H, W].
pub fn sliding_window_inference(x: &Tensor, sw: &SlidingWindow, mut predict: impl FnMut(&Tensor) -> Result<Tensor>) -> Result<Tensor> {
    sw.validate().map_err(candle_core::Error::msg)?;
    let (b, _, d, h, w) = x.dims5()?;
    if b != 1 {
        candle_core::bail!("sliding_window_inference: batch must be 1, got {b}");
    }
    let roi = sw.roi;
    let size = [d, h, w];
    // Pad (symmetrically, zeros) every axis shorter than the roi.
    let pad: [(usize, usize); 3] = [0, 1, 2].map(|a| {
        let diff = roi[a].saturating_sub(size[a]);
        (diff / 2, diff - diff / 2)
    });
    let mut xp = x.clone();
    for (a, &(lo, hi)) in pad.iter().enumerate() {
        if lo + hi > 0 {
            xp = xp.pad_with_zeros(2 + a, lo, hi)?;
        }
    }
    let ps = [0, 1, 2].map(|a| size[a] + pad[a].0 + pad[a].1);
    let st = [0, 1, 2].map(|a| starts(ps[a], roi[a], sw.overlap));
    let mut windows = Vec::new();
    for &i in &st[0] {
        for &j in &st[1] {
            for &k in &st[2] {
                windows.push([i, j, k]);
            }
        }
    }
    let imp = importance_map(roi, sw.blend);
    let pv = ps[0] * ps[1] * ps[2];
    let mut acc: Vec<f32> = Vec::new();
    let mut wsum = vec![0f32; pv];
    let mut k_out = 0;
    for chunk in windows.chunks(sw.sw_batch.max(1)) {
        let crops = chunk
            .iter()
            .map(|s| xp.narrow(2, s[0], roi[0])?.narrow(3, s[1], roi[1])?.narrow(4, s[2], roi[2]))
            .collect::<Result<Vec<_>>>()?;
        let batch = Tensor::cat(&crops, 0)?;
        let out = predict(&batch)?;
        let (n, k, r0, r1, r2) = out.dims5()?;
        if n != chunk.len() || [r0, r1, r2] != roi {
            candle_core::bail!("sliding_window_inference: predictor returned {:?} for {} windows of {roi:?}", out.dims(), chunk.len());
        }
        if acc.is_empty() {
            k_out = k;
            acc = vec![0f32; k * pv];
        }
        let o = out.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let rv = roi[0] * roi[1] * roi[2];
        for (wi, s) in chunk.iter().enumerate() {
            for a in 0..roi[0] {
                for bb in 0..roi[1] {
                    let dst = ((s[0] + a) * ps[1] + s[1] + bb) * ps[2] + s[2];
                    let src = (a * roi[1] + bb) * roi[2];
                    for z in 0..roi[2] {
                        let wgt = imp[src + z];
                        wsum[dst + z] += wgt;
                        for ch in 0..k {
                            acc[ch * pv + dst + z] += wgt * o[(wi * k + ch) * rv + src + z];
                        }
                    }
                }
            }
        }
    }
    for ch in 0..k_out {
        for (v, &s) in acc[ch * pv..(ch + 1) * pv].iter_mut().zip(&wsum) {
            *v /= s;
        }
    }
    let mut y = Tensor::from_vec(acc, (1, k_out, ps[0], ps[1], ps[2]), x.device())?;
    for (a, &(lo, _)) in pad.iter().enumerate() {
        y = y.narrow(2 + a, lo, size[a])?;
    }
    y.contiguous()
}
