//! The decoders of the paper's ablation (SETR's NUP, PUP, MLA) and 32^3 patches: output shapes, the layer
//! list against the model's weights, and gradients against central finite differences in f64.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use unetr_model::{count_params, layer_costs, DecoderKind, Unetr, UnetrConfig};

fn cfg(decoder: DecoderKind, patch: usize, img: [usize; 3]) -> UnetrConfig {
    UnetrConfig {
        feature_size: 2,
        hidden_size: 12,
        mlp_dim: 12,
        num_heads: 2,
        num_layers: 4,
        patch_size: [patch; 3],
        decoder,
        ..UnetrConfig::monai(1, 3, img)
    }
}

fn build(c: &UnetrConfig, dtype: DType) -> (Unetr, VarMap) {
    let vm = VarMap::new();
    let m = Unetr::new(c, VarBuilder::from_varmap(&vm, dtype, &Device::Cpu)).unwrap();
    (m, vm)
}

const ALL: [DecoderKind; 4] = [DecoderKind::Unetr, DecoderKind::Nup, DecoderKind::Pup, DecoderKind::Mla];

#[test]
fn every_decoder_and_patch_32_give_full_resolution_logits_and_match_the_layer_list() {
    for (kind, patch, img) in ALL.iter().map(|&k| (k, 16, [32, 16, 48])).chain(ALL.iter().map(|&k| (k, 32, [64, 32, 32]))) {
        let c = cfg(kind, patch, img);
        let (m, vm) = build(&c, DType::F32);
        let x = Tensor::randn(0f32, 1.0, (2, 1, img[0], img[1], img[2]), &Device::Cpu).unwrap();
        for train in [false, true] {
            let y = m.forward_t(&x, train).unwrap();
            assert_eq!(y.dims(), [2, 3, img[0], img[1], img[2]], "{kind:?} patch {patch} train {train}");
        }
        // Every weight belongs to a listed layer, and each layer's count is what the model holds.
        let held: usize = vm.data().lock().unwrap().iter().filter(|(k, _)| !k.contains("running_")).map(|(_, v)| v.elem_count()).sum();
        assert_eq!(count_params(&c), held, "{kind:?} patch {patch}");
        let costs = layer_costs(&c);
        for (k, v) in vm.data().lock().unwrap().iter() {
            let owner = costs.iter().filter(|l| k == &l.module || k.starts_with(&format!("{}.", l.module))).max_by_key(|l| l.module.len());
            let owner = owner.unwrap_or_else(|| panic!("{kind:?}: weight {k} belongs to no listed layer"));
            assert!(owner.params >= v.elem_count(), "{kind:?}: {k}");
        }
    }
    // PUP needs a power-of-two patch; MLA one divisible by 4: both are config errors, not panics.
    let mut bad = cfg(DecoderKind::Pup, 24, [48, 48, 48]);
    assert!(bad.validate().unwrap_err().to_string().contains("pup"));
    bad.decoder = DecoderKind::Unetr;
    assert!(bad.validate().is_ok());
}

/// d sum(logits * R) / d w against central differences, for a few entries of every parameter tensor of the
/// decoder (f64, inference-mode norms are instance norms, so train and eval agree).
#[test]
fn decoder_gradients_match_finite_differences() {
    for kind in [DecoderKind::Nup, DecoderKind::Pup, DecoderKind::Mla] {
        let c = cfg(kind, 16, [32, 16, 16]);
        let (m, vm) = build(&c, DType::F64);
        let x = Tensor::randn(0f64, 1.0, (1, 1, 32, 16, 16), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f64, 1.0, (1, 3, 32, 16, 16), &Device::Cpu).unwrap();
        let loss = |m: &Unetr| (m.forward_t(&x, true).unwrap() * &r).unwrap().sum_all().unwrap();
        let grads = loss(&m).backward().unwrap();
        let vars: Vec<(String, Var)> = vm.data().lock().unwrap().iter().filter(|(k, _)| k.starts_with("decoder.")).map(|(k, v)| (k.clone(), v.clone())).collect();
        assert!(!vars.is_empty());
        let mut checked = 0;
        for (name, v) in &vars {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{kind:?}: no gradient for {name}")).flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let w0 = v.as_tensor().flatten_all().unwrap().to_vec1::<f64>().unwrap();
            let mut candidates: Vec<usize> = (0..8).map(|j| j * (w0.len() - 1) / 7).collect();
            candidates.dedup();
            let mut here = 0;
            for i in candidates {
                if here == 3 {
                    break;
                }
                let at = |d: f64| {
                    let mut w = w0.clone();
                    w[i] += d;
                    v.set(&Tensor::from_vec(w, v.shape(), &Device::Cpu).unwrap()).unwrap();
                    loss(&m).to_scalar::<f64>().unwrap()
                };
                let fd_at = |eps: f64| (at(eps) - at(-eps)) / (2.0 * eps);
                let (fd, fd_fine) = (fd_at(1e-5), fd_at(1e-6));
                v.set(&Tensor::from_vec(w0.clone(), v.shape(), &Device::Cpu).unwrap()).unwrap();
                // A ReLU pre-activation within the step of zero makes the difference quotient depend on the
                // step (the loss has a kink there, where no derivative exists): such an entry proves nothing.
                if (fd - fd_fine).abs() > 1e-6 * (1.0 + fd.abs()) {
                    continue;
                }
                assert!((fd - g[i]).abs() <= 1e-5 * (1.0 + fd.abs()), "{kind:?} {name}[{i}]: finite difference {fd}, backward {}", g[i]);
                here += 1;
            }
            assert!(here >= 1, "{kind:?} {name}: every probed entry sits at a kink");
            checked += here;
        }
        assert!(checked >= 9, "{kind:?}: {checked} entries checked");
    }
}

/// The block-by-block backward gives the gradients of the one-graph backward: every parameter's, with and
/// without activation checkpointing, with dropout on (the recomputation replays the masks).
#[test]
fn blockwise_backward_matches_the_whole_graph() {
    use unetr_model::Checkpointing;
    // Depth 5: the last layer feeds no skip level.
    for (dropout, depth) in [(0.0, 4), (0.2, 4), (0.2, 5)] {
        let mut c = cfg(DecoderKind::Unetr, 16, [32, 16, 16]);
        c.dropout_rate = dropout;
        c.num_layers = depth;
        let (m, vm) = build(&c, DType::F64);
        let x = Tensor::randn(0f64, 1.0, (2, 1, 32, 16, 16), &Device::Cpu).unwrap();
        let r = Tensor::randn(0f64, 1.0, (2, 3, 32, 16, 16), &Device::Cpu).unwrap();
        let named: Vec<(String, Var)> = vm.data().lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let params: Vec<Var> = named.iter().map(|(_, v)| v.clone()).collect();
        m.vit.reseed_dropout(7);
        let whole = (m.forward_t(&x, true).unwrap() * &r).unwrap().sum_all().unwrap();
        let gw = whole.backward().unwrap();
        let after_forward = m.vit.dropout_rng.snapshot();
        for ck in [Checkpointing::None, Checkpointing::Vit, Checkpointing::Decoder, Checkpointing::All] {
            m.vit.reseed_dropout(7);
            let out = m
                .forward_backward(&x, |logits| { let l = (logits * &r)?.sum_all()?; Ok((l.clone(), l)) }, &params, ck)
                .unwrap();
            assert_eq!(m.vit.dropout_rng.snapshot(), after_forward, "{ck:?}: the dropout generator is not where a forward leaves it");
            let (a, b) = (whole.to_scalar::<f64>().unwrap(), out.loss.to_scalar::<f64>().unwrap());
            assert!((a - b).abs() <= 1e-9 * a.abs().max(1.0), "{ck:?} dropout {dropout} depth {depth}: loss {a} vs {b}");
            for (name, p) in &named {
                let (ga, gb) = (gw.get(p.as_tensor()).unwrap(), out.grads.get(p.as_tensor()).unwrap_or_else(|| panic!("{ck:?}: no gradient for {name}")));
                let d = (ga - gb).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                let s = ga.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                let sb = gb.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f64>().unwrap();
                assert!(d <= 1e-9 * s.max(1.0), "{ck:?} dropout {dropout} depth {depth}: {name}: gradient differs by {d} (scale {s}, ours {sb})");
            }
        }
    }
}
