use candle_core::{Device, Tensor, Module};
use std::time::Instant;
fn t<F: FnMut()>(name: &str, mut f: F) { f(); let s = Instant::now(); for _ in 0..10 { f(); } println!("{name}: {:.2} ms", s.elapsed().as_secs_f64() * 100.0); }
fn main() {
    let d = Device::Cpu;
    let x = Tensor::randn(0f32, 1., (1, 216, 768), &d).unwrap();
    let h = Tensor::randn(0f32, 1., (1, 216, 3072), &d).unwrap();
    let w1 = Tensor::randn(0f32, 1., (3072, 768), &d).unwrap();
    let b1 = Tensor::randn(0f32, 1., 3072, &d).unwrap();
    let lin = candle_nn::Linear::new(w1.clone(), Some(b1.clone()));
    t("linear 768->3072", || drop(lin.forward(&x).unwrap()));
    let x2 = x.reshape((216, 768)).unwrap();
    let wt = w1.t().unwrap().contiguous().unwrap();
    t("matmul 2d, w.t() view", || drop(x2.matmul(&w1.t().unwrap()).unwrap()));
    t("matmul 2d, w.t() contiguous", || drop(x2.matmul(&wt).unwrap()));
    let mut out = vec![0f32; 216 * 3072];
    let xv = x2.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let wv = w1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for par in [gemm::Parallelism::None, gemm::Parallelism::Rayon(2)] {
        t(&format!("raw gemm {par:?}"), || unsafe {
            gemm::gemm(216, 3072, 768, out.as_mut_ptr(), 1, 3072, false, xv.as_ptr(), 1, 768, wv.as_ptr(), 768, 1, 0.0, 1.0, false, false, false, par)
        });
    }
    t("gelu_erf 216x3072", || drop(h.gelu_erf().unwrap()));
    t("gelu (tanh) 216x3072", || drop(h.gelu().unwrap()));
    t("layer_norm 216x768", || drop(unetr_ops::layer_norm(&x, None, None, 1e-5).unwrap()));
    let q = Tensor::randn(0f32, 1., (1, 12, 216, 64), &d).unwrap();
    t("attention", || drop(unetr_ops::attention(&q, &q, &q, 0.125).unwrap()));
}
