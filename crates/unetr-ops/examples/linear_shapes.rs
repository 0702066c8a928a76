//! Times `linear` on the ViT's shapes (216 tokens at 96^3, hidden 768, MLP 3072):
//! `cargo run --release -p unetr-ops --example linear_shapes`.
use candle_core::{Device, Tensor};
use std::time::Instant;
use unetr_ops::linear;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> candle_core::Result<()> {
    let m = 216;
    let mut total = 0.0;
    for (k, n) in [(768, 2304), (768, 768), (768, 3072), (3072, 768)] {
        let x = Tensor::randn(0f32, 1., (m, k), &Device::Cpu)?;
        let w = Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)?;
        let b = Tensor::randn(0f32, 0.1, n, &Device::Cpu)?;
        linear(&x, &w, Some(&b))?;
        let mut ts = Vec::new();
        for _ in 0..21 {
            let t = Instant::now();
            linear(&x, &w, Some(&b))?;
            ts.push(t.elapsed().as_secs_f64());
        }
        ts.sort_by(f64::total_cmp);
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        total += ts[10];
        println!("{m}x{k} -> {n}: {:7.3} ms  {:6.1} GFLOP/s", ts[10] * 1e3, gflop / ts[10]);
    }
    println!("per ViT layer: {:.2} ms", total * 1e3);
    Ok(())
}
