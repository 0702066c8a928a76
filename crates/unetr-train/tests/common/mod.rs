//! The tiny training configuration the end-to-end tests share (32 x 32 x 16 phantoms, a 4-layer UNETR with
//! hidden size 16): seconds per run on 2 cores.

use std::path::Path;
use unetr_train::TrainConfig;

pub fn tiny(dir: &Path, steps: u64) -> TrainConfig {
    let mut c: TrainConfig = toml::from_str(
        r#"
        [data]
        phantom_cases = 5
        phantom_size = [32, 32, 16]
        [transforms]
        roi = [32, 32, 16]
        num_samples = 1
        [model]
        feature_size = 2
        hidden_size = 16
        mlp_dim = 16
        num_heads = 2
        num_layers = 4
        [optim]
        warmup_steps = 2
        grad_clip = 1.0
        [optim.adamw]
        lr = 1e-3
        [validation]
        every = 3
        sw_batch = 2
        "#,
    )
    .unwrap();
    c.optim.steps = steps;
    c.output.dir = dir.to_path_buf();
    c.output.log_every = 100;
    c
}
