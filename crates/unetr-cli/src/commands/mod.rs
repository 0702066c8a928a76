//! The user commands, one file each; shared options and helpers here.

pub mod eval;
pub mod forward;
pub mod infer;
pub mod inspect;
pub mod phantom;
pub mod train;

use anyhow::{bail, Result};
use std::io::IsTerminal;
use unetr_infer::inferers::Blend;
use unetr_data::MemoryLimit;
use unetr_infer::Predictor;

/// Where a command runs and how much a file may make it allocate.
#[derive(clap::Args, Debug)]
pub struct DeviceArgs {
    /// "cpu", "cuda" or "cuda:N" (CUDA needs a build with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Largest allocation a file may cause, e.g. "8GiB".
    #[arg(long, default_value_t = MemoryLimit::default())]
    pub memory_limit: MemoryLimit,
}

/// Sliding-window options (default: the checkpoint's validation settings).
#[derive(clap::Args, Debug, Default)]
pub struct WindowArgs {
    /// Sliding-window roi D,H,W; UNETR fixes it to the model's img_size (given only to be checked).
    #[arg(long)]
    pub roi: Option<String>,
    /// Window overlap in [0, 1).
    #[arg(long, allow_negative_numbers = true)]
    pub overlap: Option<f64>,
    /// Windows per forward pass (>= 1).
    #[arg(long)]
    pub sw_batch: Option<usize>,
    /// Window blending: gaussian or constant.
    #[arg(long)]
    pub blend: Option<String>,
}

impl WindowArgs {
    /// The options' ranges, checked before anything is loaded.
    pub fn check(&self) -> Result<()> {
        if let Some(o) = self.overlap {
            if !(o.is_finite() && (0.0..1.0).contains(&o)) {
                bail!("--overlap {o}: must be in [0, 1) (a negative overlap leaves voxels that no window covers)");
            }
        }
        if self.sw_batch == Some(0) {
            bail!("--sw-batch 0: must be at least 1");
        }
        if let Some(b) = &self.blend {
            if !matches!(b.as_str(), "gaussian" | "constant") {
                bail!("--blend {b}: gaussian or constant");
            }
        }
        Ok(())
    }
}

/// Applies the window options to a predictor.
pub fn window_overrides(p: &mut Predictor, a: &WindowArgs) -> Result<()> {
    if let Some(r) = &a.roi {
        let v: Vec<usize> = r.split(',').map(|x| x.trim().parse()).collect::<std::result::Result<_, _>>().map_err(|_| anyhow::anyhow!("--roi {r}: expected D,H,W"))?;
        if v.len() != 3 || v[..] != p.model.cfg.img_size {
            bail!("--roi {r}: UNETR's position embedding fixes the window to the model's img_size {:?}", p.model.cfg.img_size);
        }
    }
    if let Some(o) = a.overlap {
        p.window.overlap = o;
    }
    if let Some(b) = a.sw_batch {
        p.window.sw_batch = b;
    }
    if let Some(b) = &a.blend {
        p.window.blend = if b == "gaussian" { Blend::Gaussian } else { Blend::Constant };
    }
    p.sliding_window().validate().map_err(anyhow::Error::msg)
}

/// A progress bar on a terminal; elsewhere, plain lines.
pub struct Progress {
    bar: indicatif::ProgressBar,
}

impl Progress {
    pub fn println(&self, line: String) {
        if self.bar.is_hidden() {
            println!("{line}");
        } else {
            self.bar.println(line);
        }
    }
    pub fn inc(&self, n: u64) {
        self.bar.inc(n);
    }
    pub fn finish_and_clear(&self) {
        self.bar.finish_and_clear();
    }
}

/// A bar of `n` steps named `what` (hidden when stderr is not a terminal).
pub fn progress(n: u64, what: &str) -> Progress {
    if !std::io::stderr().is_terminal() {
        return Progress { bar: indicatif::ProgressBar::hidden() };
    }
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(indicatif::ProgressStyle::with_template("{msg} {bar:30.cyan/blue} {pos}/{len} [{elapsed_precise} < {eta_precise}]").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
    bar.set_message(what.to_string());
    Progress { bar }
}
