//! conv3d / conv_transpose3d against direct loops on shapes large enough to split into many tiles
//! (and every code path: stride 1 adjoint, non-overlapping and overlapping strided adjoints, 1x1x1).

use candle_core::{DType, Device, Tensor, Var};
use unetr_ops::{conv3d, conv_transpose3d, Conv3dParams};

struct Naive {
    y: Vec<f64>,
    dx: Vec<f64>,
    dw: Vec<f64>,
}

/// Direct loops over (n, co, output, ci, kernel) of y = conv(x, w), with dx, dw for sum(y * gy).
/// `transposed` swaps the roles: then x is the small side and y the large one, w is [ci, co, k].
#[allow(clippy::too_many_arguments)]
fn naive(
    x: &[f64],
    w: &[f64],
    gy: &[f64],
    n: usize,
    ci: usize,
    co: usize,
    inp: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
    out: [usize; 3],
    transposed: bool,
) -> Naive {
    // In both cases iterate over (small position o, kernel offset): large position = o * s + k - p.
    let (small, large) = if transposed { (inp, out) } else { (out, inp) };
    let (c_small, c_large) = if transposed { (ci, co) } else { (co, ci) };
    let mut r = Naive {
        y: vec![0.0; n * co * out.iter().product::<usize>()],
        dx: vec![0.0; x.len()],
        dw: vec![0.0; w.len()],
    };
    let sv: usize = small.iter().product();
    let lv: usize = large.iter().product();
    let kv: usize = k.iter().product();
    for b in 0..n {
        for cs in 0..c_small {
            for cl in 0..c_large {
                for o in 0..sv {
                    let oz = o / (small[1] * small[2]);
                    let oy = (o / small[2]) % small[1];
                    let ox = o % small[2];
                    for kk in 0..kv {
                        let kz = kk / (k[1] * k[2]);
                        let ky = (kk / k[2]) % k[1];
                        let kx = kk % k[2];
                        let l = [oz * s[0] + kz, oy * s[1] + ky, ox * s[2] + kx];
                        if (0..3).any(|i| l[i] < p[i] || l[i] - p[i] >= large[i]) {
                            continue;
                        }
                        let li =
                            ((l[0] - p[0]) * large[1] + (l[1] - p[1])) * large[2] + (l[2] - p[2]);
                        let wi = (cs * c_large + cl) * kv + kk; // [co, ci, k] conv or [ci, co, k] transposed
                        let si = (b * c_small + cs) * sv + o;
                        let lidx = (b * c_large + cl) * lv + li;
                        if transposed {
                            // y[large] += x[small] * w
                            r.y[lidx] += x[si] * w[wi];
                            r.dx[si] += gy[lidx] * w[wi];
                            r.dw[wi] += x[si] * gy[lidx];
                        } else {
                            // y[small] += x[large] * w
                            r.y[si] += x[lidx] * w[wi];
                            r.dx[lidx] += gy[si] * w[wi];
                            r.dw[wi] += x[lidx] * gy[si];
                        }
                    }
                }
            }
        }
    }
    r
}

fn rand(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect()
}

/// A tensor's values as f64, flattened.
fn to_f64(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let d = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max);
    d / b.iter().map(|v| v.abs()).fold(1e-30, f64::max)
}

#[allow(clippy::too_many_arguments)]
fn check(
    n: usize,
    ci: usize,
    co: usize,
    inp: [usize; 3],
    k: [usize; 3],
    s: [usize; 3],
    p: [usize; 3],
    op: [usize; 3],
    transposed: bool,
) {
    let dev = Device::Cpu;
    let xv = rand(n * ci * inp.iter().product::<usize>(), 1);
    let wshape = if transposed {
        [ci, co, k[0], k[1], k[2]]
    } else {
        [co, ci, k[0], k[1], k[2]]
    };
    let wv = rand(wshape.iter().product(), 2);
    let x = Var::from_tensor(
        &Tensor::from_vec(xv.clone(), (n, ci, inp[0], inp[1], inp[2]), &dev).unwrap(),
    )
    .unwrap();
    let w =
        Var::from_tensor(&Tensor::from_vec(wv.clone(), wshape.to_vec(), &dev).unwrap()).unwrap();
    let prm = Conv3dParams {
        stride: s,
        padding: p,
    };
    let y = if transposed {
        conv_transpose3d(x.as_tensor(), w.as_tensor(), None, prm, op).unwrap()
    } else {
        conv3d(x.as_tensor(), w.as_tensor(), None, prm).unwrap()
    };
    let out: [usize; 3] = y.dims()[2..].try_into().unwrap();
    let gyv = rand(y.elem_count(), 3);
    let gy = Tensor::from_vec(gyv.clone(), y.shape(), &dev).unwrap();
    let grads = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
    let r = naive(&xv, &wv, &gyv, n, ci, co, inp, k, s, p, out, transposed);
    let v = to_f64;
    let tag = format!("transposed={transposed} in={inp:?} k={k:?} s={s:?} p={p:?}");
    assert!(max_rel(&v(&y), &r.y) < 1e-12, "y {tag}");
    assert!(
        max_rel(&v(grads.get(x.as_tensor()).unwrap()), &r.dx) < 1e-12,
        "dx {tag}"
    );
    assert!(
        max_rel(&v(grads.get(w.as_tensor()).unwrap()), &r.dw) < 1e-12,
        "dw {tag}"
    );
}

#[test]
fn conv3d_matches_direct_loops() {
    check(
        2,
        5,
        7,
        [11, 13, 17],
        [3, 3, 3],
        [1; 3],
        [1; 3],
        [0; 3],
        false,
    );
    check(
        1,
        6,
        4,
        [9, 10, 11],
        [1, 1, 1],
        [1; 3],
        [0; 3],
        [0; 3],
        false,
    );
    check(
        2,
        3,
        5,
        [12, 11, 14],
        [2, 3, 4],
        [2, 1, 3],
        [1, 1, 2],
        [0; 3],
        false,
    );
    check(
        1,
        2,
        6,
        [16, 16, 32],
        [8, 8, 8],
        [8, 8, 8],
        [0; 3],
        [0; 3],
        false,
    );
}

#[test]
fn conv_transpose3d_matches_direct_loops() {
    // windows that tile the output exactly (written once, no zeroed buffer): cubic and anisotropic
    check(2, 6, 4, [5, 6, 7], [2, 2, 2], [2; 3], [0; 3], [0; 3], true);
    check(2, 3, 2, [3, 4, 2], [2, 1, 3], [2, 1, 3], [0; 3], [0; 3], true);
    // the same kernel and stride with output padding: uncovered planes stay zero
    check(1, 2, 3, [3, 3, 3], [2, 2, 2], [2; 3], [0; 3], [1, 0, 1], true);
    check(1, 3, 5, [6, 7, 5], [3, 3, 3], [1; 3], [1; 3], [0; 3], true);
    check(
        1,
        4,
        3,
        [5, 4, 6],
        [3, 3, 3],
        [2; 3],
        [1; 3],
        [1, 0, 1],
        true,
    );
}

/// The f32 stride-1 path (the AVX-512 direct kernels where the CPU has them) against the f64 path (GEMMs),
/// forward and both gradients. Channels in lanes (more than 16 output channels): every register blocking
/// (16, 32, 64-channel groups), compile-time and run-time channel counts, weights split into tap chunks.
/// Positions in lanes (up to 16 output channels): every group width (1..8 channels), input channels split
/// into passes, rows narrower than a vector, and the 1x1x1 convs with a partial last block. Winograd
/// (3x3x3, padding 1, 16+ input channels): F(2, 3) (even sizes, up to 64 output channels) and F(4, 3)
/// (sizes divisible by 4, up to 32 output channels; its relative error here is 4-5e-6 against F(2, 3)'s
/// 2-3e-7): blocks of whole and partial tile rows, tile rows longer than a block, input channels in
/// several passes.
#[test]
fn f32_direct_kernel_matches_f64() {
    let dev = Device::Cpu;
    for (ci, co, inp, k, p) in [
        (16, 64, [7, 9, 11], [3, 3, 3], [1, 1, 1]),
        (5, 32, [6, 5, 13], [3, 3, 3], [1, 1, 1]),
        (1, 16, [9, 8, 7], [3, 3, 3], [1, 1, 1]),
        (256, 128, [5, 4, 6], [3, 3, 3], [1, 1, 1]),
        (32, 48, [4, 6, 5], [2, 3, 1], [0, 1, 0]),
        (3, 14, [5, 5, 5], [3, 1, 3], [2, 0, 1]),
        (16, 16, [7, 9, 11], [3, 3, 3], [1, 1, 1]),
        (40, 5, [4, 6, 37], [3, 3, 3], [1, 1, 1]),
        (7, 1, [3, 3, 3], [3, 3, 3], [0, 0, 0]),
        (2, 11, [6, 3, 2], [3, 2, 3], [1, 0, 2]),
        (32, 14, [5, 7, 9], [1, 1, 1], [0, 0, 0]),
        (3, 16, [2, 3, 50], [1, 1, 1], [0, 0, 0]),
        (16, 16, [6, 8, 10], [3, 3, 3], [1, 1, 1]),
        (40, 64, [4, 2, 6], [3, 3, 3], [1, 1, 1]),
        (16, 9, [2, 4, 100], [3, 3, 3], [1, 1, 1]),
        (33, 5, [8, 14, 2], [3, 3, 3], [1, 1, 1]),
        (16, 16, [8, 8, 12], [3, 3, 3], [1, 1, 1]),
        (40, 32, [4, 12, 8], [3, 3, 3], [1, 1, 1]),
        (16, 9, [4, 4, 100], [3, 3, 3], [1, 1, 1]),
        (24, 5, [8, 16, 52], [3, 3, 3], [1, 1, 1]),
    ] {
        let x64 = Tensor::from_vec(
            rand(2 * ci * inp.iter().product::<usize>(), 5),
            (2, ci, inp[0], inp[1], inp[2]),
            &dev,
        )
        .unwrap();
        let w64 = Tensor::from_vec(
            rand(co * ci * k.iter().product::<usize>(), 6),
            (co, ci, k[0], k[1], k[2]),
            &dev,
        )
        .unwrap();
        let prm = Conv3dParams {
            stride: [1; 3],
            padding: p,
        };
        let run = |dt: DType| {
            let x = Var::from_tensor(&x64.to_dtype(dt).unwrap()).unwrap();
            let w = Var::from_tensor(&w64.to_dtype(dt).unwrap()).unwrap();
            let y = conv3d(x.as_tensor(), w.as_tensor(), None, prm).unwrap();
            let gy = Tensor::from_vec(rand(y.elem_count(), 7), y.shape(), &dev)
                .unwrap()
                .to_dtype(dt)
                .unwrap();
            let g = (&y * &gy).unwrap().sum_all().unwrap().backward().unwrap();
            let v = to_f64;
            (
                v(&y),
                v(g.get(x.as_tensor()).unwrap()),
                v(g.get(w.as_tensor()).unwrap()),
            )
        };
        let (a, b) = (run(DType::F32), run(DType::F64));
        let tag = format!("ci={ci} co={co} in={inp:?} k={k:?}");
        assert!(
            max_rel(&a.0, &b.0) < 1e-5,
            "y {tag}: {}",
            max_rel(&a.0, &b.0)
        );
        assert!(
            max_rel(&a.1, &b.1) < 1e-5,
            "dx {tag}: {}",
            max_rel(&a.1, &b.1)
        );
        assert!(
            max_rel(&a.2, &b.2) < 1e-5,
            "dw {tag}: {}",
            max_rel(&a.2, &b.2)
        );
    }
}
