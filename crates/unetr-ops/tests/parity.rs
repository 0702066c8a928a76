//! Forward and gradient parity with PyTorch on the committed fixtures, in f32 as PyTorch ran them.

mod common;
use candle_core::DType;
use common::*;

#[test]
fn forward_and_gradients_match_pytorch() {
    let mut failures = Vec::new();
    for f in fixtures() {
        let (inp, vars) = vars(&f, DType::F32);
        let (y, extra) = run(&f, &inp).unwrap_or_else(|e| panic!("{}: {e}", f.name));
        let e = rel_err(&y, &f.t["y"]);
        if e > 1e-5 {
            failures.push(format!("{}: forward rel err {e:.2e}", f.name));
        }
        for (k, v) in &extra {
            let e = rel_err(v, &f.t[k]);
            if e > 1e-5 {
                failures.push(format!("{}: {k} rel err {e:.2e}", f.name));
            }
        }
        let loss = (&y * &f.t["gy"]).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        for (k, v) in &vars {
            let reference =
                f.t.get(&format!("grad_{k}"))
                    .unwrap_or_else(|| panic!("{}: no grad_{k}", f.name));
            match grads.get(v.as_tensor()) {
                None => failures.push(format!("{}: no gradient reached {k}", f.name)),
                Some(g) => {
                    let e = rel_err(g, reference);
                    if e > 1e-5 {
                        failures.push(format!("{}: grad_{k} rel err {e:.2e}", f.name));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}

/// The same fixtures through non-contiguous views of the inputs (a permuted copy permuted back).
#[test]
fn non_contiguous_inputs() {
    let mut strided = 0;
    for f in fixtures() {
        let mut inp = std::collections::HashMap::new();
        for (k, t) in &f.t {
            let t = if t.rank() >= 2 {
                let nc = t.t().unwrap().contiguous().unwrap().t().unwrap();
                strided += usize::from(!nc.is_contiguous());
                nc
            } else {
                t.clone()
            };
            inp.insert(k.clone(), t);
        }
        let (y, _) = run(&f, &inp).unwrap();
        assert!(rel_err(&y, &f.t["y"]) <= 1e-5, "{}", f.name);
    }
    assert!(strided > 20, "too few strided inputs exercised: {strided}");
}

/// f64 inputs run the f64 kernels and agree with the f32 reference to f32 rounding.
#[test]
fn f64_kernels_agree() {
    for f in fixtures() {
        let (inp, _) = vars(&f, DType::F64);
        let (y, _) = run(&f, &inp).unwrap();
        assert_eq!(y.dtype(), DType::F64);
        assert!(rel_err(&y, &f.t["y"]) <= 1e-5, "{}", f.name);
    }
}

#[test]
fn fixtures_cover_every_op() {
    let ops: std::collections::BTreeSet<String> = fixtures().into_iter().map(|f| f.op).collect();
    for op in [
        "conv3d",
        "conv_transpose3d",
        "instance_norm",
        "instance_norm_leaky_relu",
        "batch_norm",
        "layer_norm",
        "leaky_relu",
        "softmax_last_dim",
        "linear",
        "attention",
    ] {
        assert!(ops.contains(op), "no fixture for {op}");
    }
}
