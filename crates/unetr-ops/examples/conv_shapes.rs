//! Times the forward of UNETR's conv shapes: `cargo run --release -p unetr-ops --example conv_shapes [filter]`.
//! Set `MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1` (the xtask binary's allocator settings):
//! otherwise mapping fresh pages for each 56 MB output dominates the 96^3 timings.
use candle_core::{Device, Tensor};
use std::time::Instant;

// As the xtask binary: mimalloc (see above for its settings).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use unetr_ops::{conv3d, conv3d_, conv3d_cat_, conv_transpose3d, Conv3dParams};

fn main() -> candle_core::Result<()> {
    let filter = std::env::args().nth(1).unwrap_or_default();
    let shapes = [
        (1, 16, 96, 3),
        (16, 16, 96, 3),
        (32, 16, 96, 3),
        (32, 32, 48, 3),
        (64, 32, 48, 3),
        (64, 64, 24, 3),
        (128, 64, 24, 3),
        (256, 128, 12, 3),
        (128, 128, 12, 3),
        (32, 16, 96, 1),
        (16, 14, 96, 1),
    ];
    for (ci, co, s, k) in shapes {
        let name = format!("conv{k} {ci}->{co} @{s}");
        if !name.contains(&filter) {
            continue;
        }
        let x = Tensor::randn(0f32, 1., (1, ci, s, s, s), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.1, (co, ci, k, k, k), &Device::Cpu)?;
        let p = Conv3dParams::new(1, k / 2);
        conv3d(&x, &w, None, p)?;
        let mut ts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            conv3d(&x, &w, None, p)?;
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        let gflop = 2.0 * (s * s * s * ci * co * k * k * k) as f64 / 1e9;
        println!(
            "{name:>20}: {:8.2} ms  {:6.1} GFLOP/s",
            ts[2] * 1e3,
            gflop / ts[2]
        );
    }
    // Inference in place: a res block's conv2 (`conv3d_`), and an up block's conv1 + residual projection on
    // the skip concatenation (`conv3d_cat_`, against conv3d on the concatenation plus the 1x1x1 conv).
    let median = |mut ts: Vec<f64>| {
        ts.sort_by(f64::total_cmp);
        ts[ts.len() / 2] * 1e3
    };
    for (c, s) in [(16, 96), (32, 48), (64, 24)] {
        let name = format!("in place {c}->{c} @{s}");
        if !name.contains(&filter) {
            continue;
        }
        let x = Tensor::randn(0f32, 1., (1, c, s, s, s), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.1, (c, c, 3, 3, 3), &Device::Cpu)?;
        let (w1, w3) = (
            Tensor::randn(0f32, 0.1, (c, 2 * c, 3, 3, 3), &Device::Cpu)?,
            Tensor::randn(0f32, 0.1, (c, 2 * c, 1, 1, 1), &Device::Cpu)?,
        );
        let (p1, p0) = (Conv3dParams::new(1, 1), Conv3dParams::new(1, 0));
        let mut t_in = Vec::new();
        let mut t_cat = Vec::new();
        let mut t_out = Vec::new();
        for _ in 0..6 {
            let (a, b) = (x.copy()?, x.copy()?);
            let t = Instant::now();
            conv3d_(&a, &w, p1)?;
            t_in.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            conv3d_cat_(&a, &b, &w1, &w3, p1)?;
            t_cat.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let cat = Tensor::cat(&[&x, &x], 1)?;
            drop((conv3d(&cat, &w1, None, p1)?, conv3d(&cat, &w3, None, p0)?));
            t_out.push(t.elapsed().as_secs_f64());
        }
        println!(
            "{name:>20}: conv3d_ {:8.2} ms; conv3d_cat_ {}->{c} + 1x1 {:8.2} ms (out of place, with the concat: {:8.2} ms)",
            median(t_in),
            2 * c,
            median(t_cat),
            median(t_out)
        );
    }
    // The decoder's k2 s2 up-sampling (transposed convs), input size s -> 2 s.
    for (ci, co, s) in [(32, 16, 48), (64, 32, 24), (768, 128, 6)] {
        let name = format!("convT2 {ci}->{co} @{s}");
        if !name.contains(&filter) {
            continue;
        }
        let x = Tensor::randn(0f32, 1., (1, ci, s, s, s), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.1, (ci, co, 2, 2, 2), &Device::Cpu)?;
        let p = Conv3dParams::new(2, 0);
        conv_transpose3d(&x, &w, None, p, [0; 3])?;
        let mut ts = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            conv_transpose3d(&x, &w, None, p, [0; 3])?;
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        println!("{name:>20}: {:8.2} ms", ts[2] * 1e3);
    }
    Ok(())
}
