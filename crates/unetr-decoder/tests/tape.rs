//! The hand-written training pass of the residual, up and output blocks (`unetr_decoder::tape`) against candle's
//! graph, in f64: same outputs, same input and weight gradients.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use unetr_decoder::{NormKind, UnetOutBlock, UnetResBlock, UnetrUpBlock};

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap()
}

fn scale(a: &Tensor) -> f64 {
    a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap().max(1.0)
}

/// Compares the graph's gradients (of sum(out * r)) with the taped ones for the inputs and every weight.
fn compare(what: &str, vm: &VarMap, graph: (&Tensor, &[&Var]), taped: (&Tensor, &[Tensor], &GradStore), r: &Tensor) {
    let (out, inputs) = graph;
    let (tout, tin, tgrads) = taped;
    assert!(max_diff(out, tout) <= 1e-12 * scale(out), "{what}: outputs differ");
    let g = (out * r).unwrap().sum_all().unwrap().backward().unwrap();
    for (i, (v, t)) in inputs.iter().zip(tin).enumerate() {
        let want = g.get(v.as_tensor()).unwrap();
        assert!(max_diff(want, t) <= 1e-10 * scale(want), "{what}: input {i} gradient differs by {}", max_diff(want, t));
    }
    for (name, w) in vm.data().lock().unwrap().iter() {
        let want = g.get(w.as_tensor()).unwrap_or_else(|| panic!("{what}: graph has no gradient for {name}"));
        let got = tgrads.get(w.as_tensor()).unwrap_or_else(|| panic!("{what}: tape has no gradient for {name}"));
        assert!(max_diff(want, got) <= 1e-10 * scale(want), "{what}: {name} gradient differs by {}", max_diff(want, got));
    }
}

#[test]
fn taped_blocks_match_the_graph() -> Result<()> {
    let dev = Device::Cpu;
    // A projected residual (channel count changes) and an identity one.
    for (ci, co) in [(3, 4), (4, 4)] {
        let vm = VarMap::new();
        let b = UnetResBlock::new(ci, co, 3, NormKind::Instance, VarBuilder::from_varmap(&vm, DType::F64, &dev))?;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, ci, 6, 5, 4), &dev)?)?;
        let r = Tensor::randn(0f64, 1.0, (2, co, 6, 5, 4), &dev)?;
        assert!(b.tape_applies(x.as_tensor()));
        let out = b.forward_t(x.as_tensor(), true)?;
        let (tout, tape) = b.forward_taped(&x.as_tensor().detach())?;
        let mut grads = GradStore::default();
        let gx = tape.backward(&b, r.clone(), &mut grads)?;
        compare(&format!("res block {ci}->{co}"), &vm, (&out, &[&x]), (&tout, &[gx], &grads), &r);
    }
    let vm = VarMap::new();
    let b = UnetrUpBlock::new(6, 3, [2, 2, 2], NormKind::Instance, true, VarBuilder::from_varmap(&vm, DType::F64, &dev))?;
    let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 6, 3, 2, 4), &dev)?)?;
    let skip = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 3, 6, 4, 8), &dev)?)?;
    let r = Tensor::randn(0f64, 1.0, (2, 3, 6, 4, 8), &dev)?;
    assert!(b.tape_applies(x.as_tensor()));
    let out = b.forward_t(x.as_tensor(), skip.as_tensor().clone(), true)?;
    let (tout, tape) = b.forward_taped(x.as_tensor(), skip.as_tensor().clone())?;
    let mut grads = GradStore::default();
    let (gx, gskip) = tape.backward(&b, r.clone(), &mut grads)?;
    compare("up block", &vm, (&out, &[&x, &skip]), (&tout, &[gx, gskip], &grads), &r);
    // The head: a 1x1x1 conv with a bias.
    let vm = VarMap::new();
    let head = UnetOutBlock::new(3, 5, VarBuilder::from_varmap(&vm, DType::F64, &dev))?;
    let r = Tensor::randn(0f64, 1.0, (2, 5, 6, 4, 8), &dev)?;
    assert!(head.tape_applies(skip.as_tensor()));
    let out = head.forward(skip.as_tensor())?;
    let (tout, tape) = head.forward_taped(skip.as_tensor())?;
    let mut grads = GradStore::default();
    let gx = tape.backward(&head, r.clone(), &mut grads)?;
    compare("out block", &vm, (&out, &[&skip]), (&tout, &[gx], &grads), &r);
    // Batch norms, f32 weights under an f64 input: the graph's pass, not the tape.
    let vm = VarMap::new();
    let bn = UnetResBlock::new(3, 4, 3, NormKind::Batch, VarBuilder::from_varmap(&vm, DType::F64, &dev))?;
    assert!(!bn.tape_applies(x.as_tensor()));
    assert!(!b.tape_applies(&x.as_tensor().to_dtype(DType::F32)?));
    Ok(())
}
