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
        // 12 layers' weights, used in turn as in a forward: each is cold (from memory) when used.
        let ws = (0..12).map(|_| Tensor::randn(0f32, 0.1, (n, k), &Device::Cpu)).collect::<candle_core::Result<Vec<_>>>()?;
        let b = Tensor::randn(0f32, 0.1, n, &Device::Cpu)?;
        let mut ts = Vec::new();
        for i in 0..36 {
            let w = &ws[i % 12];
            let t = Instant::now();
            linear(&x, w, Some(&b))?;
            if i >= 12 {
                ts.push(t.elapsed().as_secs_f64());
            }
        }
        ts.sort_by(f64::total_cmp);
        let gflop = 2.0 * (m * k * n) as f64 / 1e9;
        total += ts[ts.len() / 2];
        let med = ts[ts.len() / 2];
        println!("{m}x{k} -> {n}: {:7.3} ms  {:6.1} GFLOP/s", med * 1e3, gflop / med);
    }
    println!("per ViT layer: {:.2} ms", total * 1e3);
    Ok(())
}
