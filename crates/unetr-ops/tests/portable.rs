//! The portable (non-AVX-512) kernels: the same PyTorch parity with `UNETR_NO_AVX512` set, as on a CPU
//! without AVX-512. Its own test binary, because the CPU check is made once per process.

mod common;
use candle_core::DType;
use common::*;

#[test]
fn portable_kernels_match_pytorch() {
    std::env::set_var("UNETR_NO_AVX512", "1");
    assert!(!unetr_ops::kernels::avx512());
    for f in fixtures() {
        let (inp, vars) = vars(&f, DType::F32);
        let (y, _) = run(&f, &inp).unwrap();
        assert!(rel_err(&y, &f.t["y"]) <= 1e-5, "{}: forward", f.name);
        let grads = (&y * &f.t["gy"]).unwrap().sum_all().unwrap().backward().unwrap();
        for (k, v) in &vars {
            let e = rel_err(grads.get(v.as_tensor()).unwrap(), &f.t[&format!("grad_{k}")]);
            assert!(e <= 1e-5, "{}: grad_{k} {e:.2e}", f.name);
        }
    }
}
