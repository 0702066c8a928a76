//! Gradients against central finite differences, in f64 (the kernels are generic), on every fixture.

mod common;
use candle_core::{DType, Tensor};
use common::*;

fn loss(f: &Fixture, inp: &std::collections::HashMap<String, Tensor>, gy: &Tensor) -> f64 {
    let (y, _) = run(f, inp).unwrap();
    (y * gy)
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

#[test]
fn gradients_match_finite_differences() {
    let eps = 1e-6;
    let mut worst = (0.0f64, String::new());
    for f in fixtures() {
        let (inp, vars) = vars(&f, DType::F64);
        let gy = f.t["gy"].to_dtype(DType::F64).unwrap();
        let (y, _) = run(&f, &inp).unwrap();
        let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, var) in &vars {
            let an = f64s(grads.get(var.as_tensor()).unwrap());
            let base = f64s(var.as_tensor());
            let n = base.len();
            // A fixed spread of coordinates: first, last and a stride through the middle.
            let picks: Vec<usize> = (0..12)
                .map(|i| (i * 7919 + i * i * 31) % n)
                .chain([0, n - 1])
                .collect();
            for &i in &picks {
                if f.op == "leaky_relu" && base[i].abs() < 1e-3 {
                    continue; // the kink: finite differences average the two slopes
                }
                let eval = |delta: f64| {
                    let mut v = base.clone();
                    v[i] += delta;
                    let t = Tensor::from_vec(v, var.as_tensor().shape(), var.device()).unwrap();
                    let mut inp2 = inp.clone();
                    inp2.insert(name.clone(), t);
                    loss(&f, &inp2, &gy)
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                let err = (fd - an[i]).abs() / (1.0 + an[i].abs());
                if err > worst.0 {
                    worst = (
                        err,
                        format!("{} d/d{name}[{i}]: fd {fd} analytic {}", f.name, an[i]),
                    );
                }
            }
        }
    }
    assert!(
        worst.0 < 1e-6,
        "worst finite-difference mismatch {:.2e}: {}",
        worst.0,
        worst.1
    );
}
