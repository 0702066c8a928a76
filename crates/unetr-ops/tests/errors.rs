//! Bad shapes, ranks and dtypes give an error naming the op and the shapes, never a panic.

use candle_core::{DType, Device, Tensor};
use unetr_ops::*;

fn t(shape: &[usize]) -> Tensor {
    Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
}

fn err_contains<T: std::fmt::Debug>(r: candle_core::Result<T>, parts: &[&str]) {
    let msg = r.expect_err("expected an error").to_string();
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

/// Largest absolute difference of two same-shape tensors (f32 or f64).
fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

#[test]
fn conv3d_rejects_bad_input() {
    let p = Conv3dParams::new(1, 1);
    err_contains(
        conv3d(&t(&[1, 2, 4, 4]), &t(&[3, 2, 3, 3, 3]), None, p),
        &["conv3d", "rank 5", "[1, 2, 4, 4]"],
    );
    err_contains(
        conv3d(&t(&[1, 2, 4, 4, 4]), &t(&[3, 5, 3, 3, 3]), None, p),
        &["conv3d", "2 channels", "[3, 5, 3, 3, 3]"],
    );
    err_contains(
        conv3d(
            &t(&[1, 2, 2, 2, 2]),
            &t(&[3, 2, 5, 5, 5]),
            None,
            Conv3dParams::new(1, 0),
        ),
        &["conv3d", "does not fit"],
    );
    err_contains(
        conv3d(
            &t(&[1, 2, 4, 4, 4]),
            &t(&[3, 2, 3, 3, 3]),
            Some(&t(&[4])),
            p,
        ),
        &["conv3d", "bias"],
    );
    err_contains(
        conv3d(
            &t(&[1, 2, 4, 4, 4]),
            &t(&[3, 2, 3, 3, 3]),
            None,
            Conv3dParams::new(0, 1),
        ),
        &["conv3d"],
    );
    let x64 = t(&[1, 2, 4, 4, 4]).to_dtype(DType::F64).unwrap();
    err_contains(
        conv3d(&x64, &t(&[3, 2, 3, 3, 3]), None, p),
        &["conv3d", "F64", "F32"],
    );
    let xu8 = t(&[1, 2, 4, 4, 4]).to_dtype(DType::U8).unwrap();
    err_contains(
        conv3d(&xu8, &t(&[3, 2, 3, 3, 3]), None, p),
        &["conv3d", "U8"],
    );
    // bf16 on the CPU is not an error: it computes in f32 and rounds back (mixed precision).
    let xbf = t(&[1, 2, 4, 4, 4]).to_dtype(DType::BF16).unwrap();
    let y = conv3d(
        &xbf,
        &t(&[3, 2, 3, 3, 3]).to_dtype(DType::BF16).unwrap(),
        None,
        p,
    )
    .unwrap();
    assert_eq!(y.dtype(), DType::BF16);
    let y32 = conv3d(&t(&[1, 2, 4, 4, 4]), &t(&[3, 2, 3, 3, 3]), None, p).unwrap();
    let d = (y.to_dtype(DType::F32).unwrap() - y32)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(
        d.to_scalar::<f32>().unwrap() < 1e-6,
        "integer-valued sums are exact in bf16 here"
    );
    err_contains(
        conv3d(&t(&[1, 0, 4, 4, 4]), &t(&[3, 0, 3, 3, 3]), None, p),
        &["conv3d", "zero-sized"],
    );
}

#[test]
fn conv_transpose3d_rejects_bad_input() {
    let p = Conv3dParams::new(2, 0);
    err_contains(
        conv_transpose3d(&t(&[1, 4, 3, 3, 3]), &t(&[2, 3, 2, 2, 2]), None, p, [0; 3]),
        &["conv_transpose3d", "4 channels"],
    );
    err_contains(
        conv_transpose3d(
            &t(&[1, 2, 3, 3, 3]),
            &t(&[2, 3, 2, 2, 2]),
            None,
            p,
            [2, 0, 0],
        ),
        &["output_padding"],
    );
    err_contains(
        conv_transpose3d(
            &t(&[1, 2, 1, 1, 1]),
            &t(&[2, 3, 1, 1, 1]),
            None,
            Conv3dParams::new(1, 1),
            [0; 3],
        ),
        &["empty output"],
    );
    err_contains(
        conv_transpose3d(&t(&[2, 3, 3, 3]), &t(&[2, 3, 2, 2, 2]), None, p, [0; 3]),
        &["conv_transpose3d", "rank 5"],
    );
}

#[test]
fn norms_reject_bad_input() {
    err_contains(
        instance_norm(&t(&[4, 5]), None, None, 1e-5),
        &["instance_norm", "rank >= 3"],
    );
    err_contains(
        instance_norm(&t(&[1, 4, 5, 5]), Some(&t(&[3])), None, 1e-5),
        &["instance_norm", "weight", "[3]"],
    );
    err_contains(
        instance_norm(&t(&[1, 4, 5, 5]), None, None, f64::NAN),
        &["instance_norm", "eps"],
    );
    err_contains(
        instance_norm_leaky_relu(&t(&[1, 0, 5, 5]), 1e-5, 0.01),
        &["instance_norm_leaky_relu", "empty"],
    );
    err_contains(
        layer_norm(&t(&[2, 8]), Some(&t(&[7])), None, 1e-5),
        &["layer_norm", "weight"],
    );
    // the fused affine path (weight and bias) checks both
    err_contains(
        layer_norm(&t(&[2, 8]), Some(&t(&[8])), Some(&t(&[9])), 1e-5),
        &["layer_norm", "bias", "[8]"],
    );
    err_contains(
        layer_norm(&t(&[2, 8]), Some(&t(&[8])), Some(&t(&[8]).to_dtype(DType::F64).unwrap()), 1e-5),
        &["layer_norm", "F64"],
    );
    err_contains(add(&t(&[2, 8]), &t(&[8, 2])), &["add", "differ in shape"]);
    let (rm, rv) = (t(&[3]), t(&[4]));
    err_contains(
        batch_norm(&t(&[2, 4, 3, 3, 3]), &rm, &rv, None, None, true, 0.1, 1e-5),
        &["batch_norm", "running_mean"],
    );
    let (rm, rv) = (t(&[4]), t(&[4]));
    err_contains(
        batch_norm(&t(&[1, 4, 1, 1, 1]), &rm, &rv, None, None, true, 0.1, 1e-5),
        &["batch_norm", "more than one value"],
    );
    err_contains(
        leaky_relu(&t(&[3]).to_dtype(DType::U32).unwrap(), 0.1),
        &["leaky_relu", "U32"],
    );
}

#[test]
fn attention_rejects_bad_input() {
    err_contains(
        attention(&t(&[2, 3, 5]), &t(&[2, 3, 5]), &t(&[2, 3, 5]), 1.0),
        &["attention", "rank 4"],
    );
    err_contains(
        attention(&t(&[2, 3, 5, 4]), &t(&[2, 3, 6, 8]), &t(&[2, 3, 6, 8]), 1.0),
        &["attention", "[2, 3, 6, 8]"],
    );
    err_contains(
        attention(&t(&[2, 3, 5, 4]), &t(&[2, 3, 6, 4]), &t(&[2, 3, 7, 4]), 1.0),
        &["attention"],
    );
}

#[test]
fn activations_reject_bad_input() {
    err_contains(
        add_leaky_relu(&t(&[2, 3]), &t(&[3, 2]), 0.01),
        &["add_leaky_relu", "[2, 3]", "[3, 2]"],
    );
    let x64 = t(&[2, 3]).to_dtype(DType::F64).unwrap();
    err_contains(
        add_leaky_relu(&t(&[2, 3]), &x64, 0.01),
        &["add_leaky_relu", "F64"],
    );
    err_contains(
        gelu(&t(&[2, 3]).to_dtype(DType::U32).unwrap()),
        &["gelu", "U32"],
    );
}

/// The in-place inference variants equal the out-of-place ops, and refuse tensors whose overwrite would
/// corrupt an autograd graph (or that they cannot write: strided views).
#[test]
fn inplace_ops_match_and_refuse_graph_tensors() {
    let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 5, 6), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (2, 3, 4, 5, 6), &Device::Cpu).unwrap();
    let (p0, p1) = (Conv3dParams::new(1, 0), Conv3dParams::new(1, 1));
    let w = (Tensor::randn(0f32, 1.0, (3, 3, 3, 3, 3), &Device::Cpu).unwrap() * 0.2).unwrap();
    let w6 = (Tensor::randn(0f32, 1.0, (3, 6, 3, 3, 3), &Device::Cpu).unwrap() * 0.2).unwrap();
    let w6s = Tensor::randn(0f32, 1.0, (3, 6, 1, 1, 1), &Device::Cpu).unwrap();
    let cat = |t: &Tensor| Tensor::cat(&[t, &b], 1);
    // a single-channel block input and its 1x1x1 projection to 3 channels (one weight negative)
    let x1 = (Tensor::randn(0f32, 1.0, (2, 1, 4, 5, 6), &Device::Cpu).unwrap() * 3.0).unwrap();
    let w1 = Tensor::new(&[0.7f32, -1.3, 0.05], &Device::Cpu)
        .unwrap()
        .reshape((3, 1, 1, 1, 1))
        .unwrap();
    type OutOfPlace<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<Tensor> + 'a>;
    type InPlace<'a> = Box<dyn Fn(&Tensor) -> candle_core::Result<()> + 'a>;
    // UnetResBlock's end, composed from the out-of-place ops.
    let res_end = |t: &Tensor, norm_b: bool| {
        let r = if norm_b {
            instance_norm(&b, None, None, 1e-5)?
        } else {
            b.clone()
        };
        add_leaky_relu(&instance_norm(t, None, None, 1e-5)?, &r, 0.01)
    };
    let cases: [(&str, OutOfPlace, InPlace); 12] = [
        (
            "instance_norm",
            Box::new(|t| instance_norm(t, None, None, 1e-5)),
            Box::new(|t| instance_norm_(t, 1e-5)),
        ),
        (
            "instance_norm_leaky_relu",
            Box::new(|t| instance_norm_leaky_relu(t, 1e-5, 0.01)),
            Box::new(|t| instance_norm_leaky_relu_(t, 1e-5, 0.01)),
        ),
        (
            "add_leaky_relu",
            Box::new(|t| add_leaky_relu(t, &b, 0.01)),
            Box::new(|t| add_leaky_relu_(t, &b, 0.01)),
        ),
        (
            "add",
            Box::new(|t| add(t, &b)),
            Box::new(|t| add_(t, &b)),
        ),
        (
            "instance_norm_backward",
            Box::new(|t| instance_norm_backward(&b, t, 1e-5, None)),
            Box::new(|t| instance_norm_backward_(&b, t, 1e-5, None)),
        ),
        (
            "instance_norm_backward",
            Box::new(|t| instance_norm_backward(&b, t, 1e-5, Some(0.01))),
            Box::new(|t| instance_norm_backward_(&b, t, 1e-5, Some(0.01))),
        ),
        (
            "leaky_relu_backward_from_output",
            Box::new(|t| leaky_relu_backward_from_output(t, &b, 0.01)),
            Box::new(|t| leaky_relu_backward_from_output_(t, &b, 0.01)),
        ),
        (
            "instance_norm_add_leaky_relu",
            Box::new(|t| res_end(t, true)),
            Box::new(|t| instance_norm_add_leaky_relu_(t, &b, true, 1e-5, 0.01)),
        ),
        (
            "instance_norm_add_leaky_relu",
            Box::new(|t| res_end(t, false)),
            Box::new(|t| instance_norm_add_leaky_relu_(t, &b, false, 1e-5, 0.01)),
        ),
        (
            "conv3d_inplace",
            Box::new(|t| conv3d(t, &w, None, p1)),
            Box::new(|t| conv3d_(t, &w, p1)),
        ),
        (
            "conv3d_inplace",
            Box::new(|t| {
                Tensor::cat(
                    &[
                        conv3d(&cat(t)?, &w6, None, p1)?,
                        conv3d(&cat(t)?, &w6s, None, p0)?,
                    ],
                    1,
                )
            }),
            Box::new(|t| conv3d_cat_(t, &b.copy()?, &w6, &w6s, p1)),
        ),
        (
            "instance_norm_add_proj1_leaky_relu",
            Box::new(|t| {
                add_leaky_relu(
                    &instance_norm(t, None, None, 1e-5)?,
                    &instance_norm(&conv3d(&x1, &w1, None, p0)?, None, None, 1e-5)?,
                    0.01,
                )
            }),
            Box::new(|t| instance_norm_add_proj1_leaky_relu_(t, &x1, &w1, 1e-5, 0.01)),
        ),
    ];
    for (name, out_of_place, in_place) in &cases {
        let want = out_of_place(&x).unwrap();
        let y = x.copy().unwrap();
        in_place(&y).unwrap();
        // (conv3d_cat_ writes its second output into its own copy of b: compare the first half)
        let want = want.narrow(1, 0, 3).unwrap();
        assert!(max_diff(&y, &want) < 1e-5, "{name}");
        let v = candle_core::Var::from_tensor(&x).unwrap();
        err_contains(in_place(v.as_tensor()), &[name, "gradients"]);
        err_contains(in_place(&x.transpose(3, 4).unwrap()), &[name, "contiguous"]);
    }
    err_contains(
        add_leaky_relu_(&x.copy().unwrap(), &t(&[2, 3]), 0.01),
        &["add_leaky_relu", "[2, 3]"],
    );
    err_contains(
        instance_norm_add_leaky_relu_(&x.copy().unwrap(), &t(&[2, 3]), true, 1e-5, 0.01),
        &["instance_norm_add_leaky_relu", "[2, 3]"],
    );
}

/// `conv3d_cat_`: both outputs equal the out-of-place convs of the concatenation (batch 2, f32 and f64),
/// and what it cannot do in place is refused with a message.
#[test]
fn conv3d_cat_inplace_matches_and_refuses() {
    for dt in [DType::F32, DType::F64] {
        let r = |s: (usize, usize, usize, usize, usize), k: f64| {
            (Tensor::randn(0f32, 1.0, s, &Device::Cpu).unwrap() * k)
                .unwrap()
                .to_dtype(dt)
                .unwrap()
        };
        let (a, b) = (r((2, 4, 6, 5, 4), 1.0), r((2, 3, 6, 5, 4), 1.0));
        let (w, ws) = (r((4, 7, 3, 3, 3), 0.2), r((3, 7, 1, 1, 1), 1.0));
        let x = Tensor::cat(&[&a, &b], 1).unwrap();
        let want_a = conv3d(&x, &w, None, Conv3dParams::new(1, 1)).unwrap();
        let want_b = conv3d(&x, &ws, None, Conv3dParams::new(1, 0)).unwrap();
        let (ya, yb) = (a.copy().unwrap(), b.copy().unwrap());
        conv3d_cat_(&ya, &yb, &w, &ws, Conv3dParams::new(1, 1)).unwrap();
        assert!(
            max_diff(&ya, &want_a) < 1e-5 && max_diff(&yb, &want_b) < 1e-5,
            "{dt:?}"
        );
    }
    let (a, b) = (t(&[1, 4, 6, 5, 4]), t(&[1, 3, 6, 5, 4]));
    let (w, ws) = (t(&[4, 7, 3, 3, 3]), t(&[3, 7, 1, 1, 1]));
    let p1 = Conv3dParams::new(1, 1);
    err_contains(
        conv3d_cat_(&a, &a, &t(&[4, 8, 3, 3, 3]), &t(&[4, 8, 1, 1, 1]), p1),
        &["conv3d_inplace", "share storage"],
    );
    err_contains(
        conv3d_cat_(&a, &t(&[1, 3, 6, 5, 5]), &w, &ws, p1),
        &["conv3d_inplace", "spatial"],
    );
    err_contains(
        conv3d_cat_(&a, &b, &t(&[3, 7, 3, 3, 3]), &ws, p1),
        &["conv3d_inplace", "[4, 7, k, k, k]"],
    );
    err_contains(
        conv3d_cat_(&a, &b, &w, &t(&[3, 7, 3, 3, 3]), p1),
        &["conv3d_inplace", "side weight"],
    );
    err_contains(
        conv3d_cat_(&a, &b, &w, &ws, Conv3dParams::new(2, 1)),
        &["conv3d_inplace", "stride 1"],
    );
    err_contains(
        conv3d_cat_(&a, &b.to_dtype(DType::F64).unwrap(), &w, &ws, p1),
        &["conv3d_inplace"],
    );
    err_contains(
        conv3d_(&a, &t(&[4, 4, 3, 3, 3]), Conv3dParams::new(1, 0)),
        &["conv3d_inplace", "padding"],
    );
    err_contains(conv3d_(&a, &t(&[5, 4, 3, 3, 3]), p1), &["conv3d_inplace"]);
}

/// In inference the bias is added in place into the conv's fresh output; per channel, for every sample.
#[test]
fn conv_bias_in_place_matches_broadcast_add() {
    let x = Tensor::randn(0f32, 1.0, (3, 2, 4, 3, 5), &Device::Cpu).unwrap();
    let w = Tensor::randn(0f32, 1.0, (4, 2, 1, 1, 1), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, 4, &Device::Cpu).unwrap();
    let y = conv3d(&x, &w, Some(&b), Conv3dParams::default()).unwrap();
    let want = conv3d(&x, &w, None, Conv3dParams::default())
        .unwrap()
        .broadcast_add(&b.reshape((1, 4, 1, 1, 1)).unwrap())
        .unwrap();
    let e = max_diff(&y, &want);
    assert!(e < 1e-6, "max-abs {e}");
}

/// The hand-written backward functions refuse operands that do not fit one convolution.
#[test]
fn backward_functions_reject_bad_input() {
    let p = Conv3dParams::new(1, 1);
    let (x, w) = (t(&[1, 2, 4, 4, 4]), t(&[3, 2, 3, 3, 3]));
    let dy = Tensor::randn(0f32, 1.0, (1, 3, 4, 4, 4), &Device::Cpu).unwrap();
    let xr = Tensor::randn(0f32, 1.0, (1, 2, 4, 4, 4), &Device::Cpu).unwrap();
    let (dx, dw) = conv3d_backward(&xr, &w, &dy, p).unwrap();
    // The two halves alone are the same ops, so the same values.
    assert_eq!(max_diff(&dw, &conv3d_backward_weight(&xr, &w, &dy, p).unwrap()), 0.0);
    assert_eq!(max_diff(&dx, &conv3d_backward_input(xr.dims(), &w, &dy, p).unwrap()), 0.0);
    err_contains(conv3d_backward_input(&[1, 5, 4, 4, 4], &w, &dy, p), &["conv3d_backward", "channels"]);
    err_contains(conv3d_backward_input(&[1, 2, 4, 4], &w, &dy, p), &["rank 5"]);
    err_contains(conv3d_backward_weight(&xr, &w, &dy.to_dtype(DType::F64).unwrap(), p), &["conv3d_backward"]);
    err_contains(conv3d_backward(&x, &w, &t(&[1, 3, 4, 4, 5]), p), &["conv3d_bwd"]);
    err_contains(conv3d_backward(&x, &w, &t(&[1, 2, 4, 4, 4]), p), &["conv3d_bwd"]);
    err_contains(conv3d_backward(&x, &w, &t(&[1, 3, 4, 4]), p), &["rank 5"]);
    let dy64 = Tensor::ones((1, 3, 4, 4, 4), DType::F64, &Device::Cpu).unwrap();
    err_contains(conv3d_backward(&x, &w, &dy64, p), &["conv3d_backward"]);
    // Transposed, kernel = stride 2: x [1, 2, 2, 2, 2] -> y [1, 3, 4, 4, 4].
    let (tp, tw) = (Conv3dParams { stride: [2; 3], padding: [0; 3] }, t(&[2, 3, 2, 2, 2]));
    let tx = t(&[1, 2, 2, 2, 2]);
    assert!(conv_transpose3d_backward(&tx, &tw, &t(&[1, 3, 4, 4, 4]), tp).is_ok());
    err_contains(conv_transpose3d_backward(&tx, &tw, &t(&[1, 3, 4, 4, 6]), tp), &["conv_transpose3d_backward", "does not fit"]);
    err_contains(conv_transpose3d_backward(&tx, &tw, &t(&[1, 2, 4, 4, 4]), tp), &["conv3d"]);
    err_contains(conv_transpose3d_backward(&tx, &tw, &t(&[3, 4, 4, 4]), tp), &["rank 5"]);
    err_contains(instance_norm_backward(&x, &t(&[1, 2, 4, 4, 3]), 1e-5, None), &["instance_norm_backward"]);
    err_contains(leaky_relu_backward_from_output(&x, &x, 0.0), &["slope"]);
    err_contains(leaky_relu_backward_from_output_(&x.copy().unwrap(), &x, 0.0), &["slope"]);
    err_contains(instance_norm_backward_(&x, &t(&[1, 2, 4, 4, 3]), 1e-5, None), &["instance_norm_backward"]);
}
