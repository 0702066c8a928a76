//! Times the forward of UNETR's conv shapes: `cargo run --release -p unetr-ops --example conv_shapes [filter]`.
//! Set `MIMALLOC_PURGE_DELAY=-1 MIMALLOC_ARENA_EAGER_COMMIT=1` (the xtask binary's allocator settings):
//! otherwise mapping fresh pages for each 56 MB output dominates the 96^3 timings.
use candle_core::{Device, Tensor};
use std::time::Instant;

// As the xtask binary: mimalloc (see above for its settings).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use unetr_ops::{conv3d, conv_transpose3d, Conv3dParams};

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
