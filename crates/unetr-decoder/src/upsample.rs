//! Trilinear up-sampling as PyTorch's `F.interpolate(mode="trilinear", align_corners=False)`, built from
//! candle ops (a small interpolation matrix per axis, applied by matmul), so it has a backward.

use candle_core::{Result, Tensor};

/// The [out, in] linear-interpolation matrix of one axis (align_corners=False: source position
/// (o + 0.5) / scale - 0.5, clamped to the edge samples).
fn interp_matrix(n_in: usize, scale: usize) -> Vec<f32> {
    let n_out = n_in * scale;
    let mut m = vec![0f32; n_out * n_in];
    for o in 0..n_out {
        let src = ((o as f64 + 0.5) / scale as f64 - 0.5).max(0.0);
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let w = (src - i0 as f64) as f32;
        m[o * n_in + i0] += 1.0 - w;
        m[o * n_in + i1] += w;
    }
    m
}

/// Up-samples the spatial axes of x [B, C, D, H, W] by `scale` per axis.
pub fn upsample_trilinear(x: &Tensor, scale: [usize; 3]) -> Result<Tensor> {
    let mut y = x.clone();
    for axis in (2..5).rev() {
        let s = scale[axis - 2];
        if s == 1 {
            continue;
        }
        let n = y.dim(axis)?;
        let a = Tensor::from_vec(interp_matrix(n, s), (n * s, n), y.device())?.to_dtype(y.dtype())?.t()?;
        // Move the axis last, interpolate it (rows @ [n, n * s]), move it back.
        let moved = y.transpose(axis, 4)?.contiguous()?;
        let dims = moved.dims().to_vec();
        let rows: usize = dims[..4].iter().product();
        let out = moved.reshape((rows, n))?.matmul(&a)?;
        let mut nd = dims.clone();
        nd[4] = n * s;
        y = out.reshape(nd)?.transpose(axis, 4)?.contiguous()?;
    }
    Ok(y)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A constant stays constant, a linear ramp stays linear inside, and the sizes multiply.
    #[test]
    fn upsampling_is_linear_interpolation() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::arange(0f32, 4.0, &dev).unwrap().reshape((1, 1, 1, 1, 4)).unwrap();
        let y = upsample_trilinear(&x, [1, 1, 2]).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(y, [0.0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3.0]);
        let c = Tensor::ones((2, 3, 2, 3, 2), candle_core::DType::F32, &dev).unwrap();
        let u = upsample_trilinear(&c, [2, 4, 3]).unwrap();
        assert_eq!(u.dims(), [2, 3, 4, 12, 6]);
        assert!(u.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().all(|v| (v - 1.0).abs() < 1e-6));
    }
}
