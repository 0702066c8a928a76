//! Segments a CT volume with MONAI UNETR weights (e.g. the research checkpoint UNETR_model_best_acc.pth),
//! preprocessed as the research recipe (RAS, 1.5 x 1.5 x 2 mm, CT window -175..250), label map written on
//! the input's grid:
//!
//! cargo run --release -p unetr-infer --example segment -- config.json weights.pth ct.nii.gz seg.nii.gz
use unetr_infer::{candle_core::Device, Predictor, Probabilities, Tta, WindowSettings};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let [_, config, weights, input, output] = std::env::args().collect::<Vec<_>>().try_into().map_err(|_| "usage: segment CONFIG.json WEIGHTS INPUT.nii.gz OUTPUT.nii.gz")?;
    let cfg = unetr_model::UnetrConfig::from_json(&std::fs::read_to_string(config)?)?;
    let limit = unetr_data::MemoryLimit::default();
    let model = unetr_model::UnetrWeights::load(&cfg, weights.as_ref(), &Device::Cpu, limit.bytes())?.inference_model()?;
    let p = Predictor::new(model, unetr_data::TransformConfig::default(), WindowSettings::default(), limit)?;
    let seg = p.segment(&unetr_data::Item { image: vec![input.into()], label: None }, Tta::Off, Probabilities::Skip)?;
    unetr_data::write_nifti(output.as_ref(), &seg.labels, true)?;
    Ok(())
}
