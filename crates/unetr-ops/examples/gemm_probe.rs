use std::time::Instant;
fn main() {
    let cases: &[(usize, usize, usize)] = &[
        (16, 4096, 48),
        (16, 4096, 432),
        (32, 4096, 96),
        (16, 98 * 96, 48),
    ];
    for &(m, n, k) in cases {
        let a = vec![1.0f32; m * k];
        let b = vec![1.0f32; (n + 64) * k];
        let mut d = vec![0.0f32; m * n];
        for (name, brs, bcs, drs, dcs) in [
            (
                "B rs=1 cs=k (chan-last view)",
                1isize,
                k as isize,
                n as isize,
                1isize,
            ),
            ("B rs=n cs=1 (row-major)", n as isize, 1, n as isize, 1),
            ("B rs=1 cs=k, dst col-major", 1, k as isize, 1, m as isize),
        ] {
            let reps = 200;
            let t = Instant::now();
            for _ in 0..reps {
                unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        d.as_mut_ptr(),
                        dcs,
                        drs,
                        true,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        bcs,
                        brs,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
            let s = t.elapsed().as_secs_f64() / reps as f64;
            println!(
                "m={m} n={n} k={k} {name}: {:.1} GFLOP/s",
                2.0 * (m * n * k) as f64 / s / 1e9
            );
        }
    }
}
