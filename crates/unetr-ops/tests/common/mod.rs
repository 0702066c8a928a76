//! Shared helpers of the ops tests: the PyTorch fixtures (scripts/gen_ops_fixtures.py) and one
//! dispatcher that runs the op a fixture names on given inputs.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor, Var};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unetr_ops::*;

pub struct Fixture {
    pub name: String,
    pub op: String,
    pub params: serde_json::Value,
    pub t: HashMap<String, Tensor>,
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    paths.sort();
    for p in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
    {
        let bytes = std::fs::read(&p).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let meta = meta.metadata().clone().expect("fixture without metadata");
        out.push(Fixture {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            op: meta["op"].clone(),
            params: serde_json::from_str(&meta["params"]).unwrap(),
            t: candle_core::safetensors::load(&p, &Device::Cpu).unwrap(),
        });
    }
    assert!(
        out.len() >= 20,
        "fixtures missing: run scripts/gen_ops_fixtures.py"
    );
    out
}

fn arr3(v: &serde_json::Value) -> [usize; 3] {
    let a: Vec<usize> = serde_json::from_value(v.clone()).unwrap();
    [a[0], a[1], a[2]]
}

/// Names of the inputs that take a gradient.
pub fn grad_inputs(f: &Fixture) -> Vec<String> {
    let mut v: Vec<String> =
        f.t.keys()
            .filter(|k| ["x", "w", "b", "weight", "bias", "q", "k", "v"].contains(&k.as_str()))
            .cloned()
            .collect();
    v.sort();
    v
}

/// Runs the fixture's op on `inp` (same names as the fixture's inputs). Returns y and extra outputs.
pub fn run(
    f: &Fixture,
    inp: &HashMap<String, Tensor>,
) -> Result<(Tensor, HashMap<String, Tensor>)> {
    let p = &f.params;
    let g = |k: &str| inp.get(k);
    let x = g("x");
    let mut extra = HashMap::new();
    let y = match f.op.as_str() {
        "conv3d" => {
            let prm = Conv3dParams {
                stride: arr3(&p["stride"]),
                padding: arr3(&p["padding"]),
            };
            conv3d(x.unwrap(), g("w").unwrap(), g("b"), prm)?
        }
        "conv_transpose3d" => {
            let prm = Conv3dParams {
                stride: arr3(&p["stride"]),
                padding: arr3(&p["padding"]),
            };
            conv_transpose3d(
                x.unwrap(),
                g("w").unwrap(),
                g("b"),
                prm,
                arr3(&p["output_padding"]),
            )?
        }
        "instance_norm" => instance_norm(
            x.unwrap(),
            g("weight"),
            g("bias"),
            p["eps"].as_f64().unwrap(),
        )?,
        "instance_norm_leaky_relu" => instance_norm_leaky_relu(
            x.unwrap(),
            p["eps"].as_f64().unwrap(),
            p["slope"].as_f64().unwrap(),
        )?,
        "batch_norm" => {
            let (y, st) = batch_norm(
                x.unwrap(),
                g("running_mean").unwrap(),
                g("running_var").unwrap(),
                g("weight"),
                g("bias"),
                p["training"].as_bool().unwrap(),
                p["momentum"].as_f64().unwrap(),
                p["eps"].as_f64().unwrap(),
            )?;
            match st {
                Some(st) => {
                    extra.insert("new_running_mean".into(), st.mean);
                    extra.insert("new_running_var".into(), st.var);
                }
                None => {
                    extra.insert(
                        "new_running_mean".into(),
                        g("running_mean").unwrap().clone(),
                    );
                    extra.insert("new_running_var".into(), g("running_var").unwrap().clone());
                }
            }
            y
        }
        "layer_norm" => layer_norm(
            x.unwrap(),
            g("weight"),
            g("bias"),
            p["eps"].as_f64().unwrap(),
        )?,
        "leaky_relu" => leaky_relu(x.unwrap(), p["slope"].as_f64().unwrap())?,
        "softmax_last_dim" => softmax_last_dim(x.unwrap())?,
        "gelu" => gelu(x.unwrap())?,
        "add_leaky_relu" => add_leaky_relu(g("a").unwrap(), g("b").unwrap(), p["slope"].as_f64().unwrap())?,
        "linear" => linear(x.unwrap(), g("w").unwrap(), g("b"))?,
        "attention" => attention(
            g("q").unwrap(),
            g("k").unwrap(),
            g("v").unwrap(),
            p["scale"].as_f64().unwrap(),
        )?,
        op => panic!("unknown op {op} in fixture {}", f.name),
    };
    Ok((y, extra))
}

/// Inputs as `Var`s of the given dtype (the gradient-taking ones) or plain tensors; returns both maps.
pub fn vars(f: &Fixture, dtype: DType) -> (HashMap<String, Tensor>, HashMap<String, Var>) {
    let gi = grad_inputs(f);
    let mut inp = HashMap::new();
    let mut vs = HashMap::new();
    for (k, t) in &f.t {
        if k == "y" || k == "gy" || k.starts_with("grad_") || k.starts_with("new_") {
            continue;
        }
        let t = t.to_dtype(dtype).unwrap();
        if gi.contains(k) {
            let v = Var::from_tensor(&t).unwrap();
            inp.insert(k.clone(), v.as_tensor().clone());
            vs.insert(k.clone(), v);
        } else {
            inp.insert(k.clone(), t);
        }
    }
    (inp, vs)
}

/// A tensor's values, flattened, as f64.
pub fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

/// max |a - b| / max |b| (or the absolute difference when b is all zeros).
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    let (a, b) = (f64s(a), f64s(b));
    let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
    let scale = b.iter().map(|y| y.abs()).fold(0.0, f64::max);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}
