//! UNETR's CUDA kernels, one module per op family, each exported for f32, f64 and bf16 (entry points
//! `<kernel>_f32`, `<kernel>_f64`, `<kernel>_bf16`). unetr-ops launches them on candle's CUDA device.
//!
//! With the `ptx` feature the build compiles every module to PTX with nvcc ([`Module::ptx`]); the GPU machine
//! then needs no run-time compiler. The sources are always here ([`Module::source`], [`COMMON`]), so that a
//! machine without nvcc can still check them with NVRTC (tests/nvrtc.rs).

/// A PTX module: its kernels share one source file and are loaded together.
#[derive(Debug)]
pub struct Module {
    /// The name the module is loaded under (unique among the modules a CUDA device holds).
    pub name: &'static str,
    /// The source file, under `src/`.
    pub file: &'static str,
    /// The CUDA C source.
    pub source: &'static str,
    /// The kernels it defines, without the dtype suffix.
    pub kernels: &'static [&'static str],
    #[cfg(feature = "ptx")]
    ptx: &'static str,
}

/// The header every module includes, as (include name, source).
pub const COMMON: (&str, &str) = ("common.cuh", include_str!("common.cuh"));

/// The dtype suffixes every kernel exists for.
pub const DTYPES: [&str; 3] = ["f32", "f64", "bf16"];

macro_rules! module {
    ($id:ident, $file:literal, [$($k:literal),+ $(,)?]) => {
        pub const $id: Module = Module {
            name: concat!("unetr_", $file),
            file: concat!($file, ".cu"),
            source: include_str!(concat!($file, ".cu")),
            kernels: &[$($k),+],
            #[cfg(feature = "ptx")]
            ptx: include_str!(concat!(env!("OUT_DIR"), "/", $file, ".ptx")),
        };
    };
}

module!(CONV3D, "conv3d", ["conv3d_fwd", "conv3d_bwd_input", "conv3d_bwd_weight"]);
module!(NORM, "norm", ["norm_fwd", "norm_bwd"]);
module!(ACTIVATION, "activation", ["leaky_relu", "softmax"]);
module!(ATTENTION, "attention", ["attn_fwd", "attn_bwd_q", "attn_bwd_kv"]);

/// Every module.
pub const MODULES: [&Module; 4] = [&CONV3D, &NORM, &ACTIVATION, &ATTENTION];

impl Module {
    /// The PTX nvcc built from [`Module::source`].
    #[cfg(feature = "ptx")]
    pub fn ptx(&self) -> &'static str {
        self.ptx
    }

    /// Every entry point: each kernel for each dtype.
    pub fn entry_points(&self) -> impl Iterator<Item = String> + '_ {
        self.kernels.iter().flat_map(|k| DTYPES.iter().map(move |d| format!("{k}_{d}")))
    }
}

/// The module that defines the entry point `name` (`<kernel>_<dtype>`), if any. Called at every launch, so
/// it compares names without building any.
pub fn module_of(name: &str) -> Option<&'static Module> {
    let (kernel, dtype) = name.rsplit_once('_')?;
    if !DTYPES.contains(&dtype) {
        return None;
    }
    MODULES.into_iter().find(|m| m.kernels.contains(&kernel))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_point_has_one_module() {
        assert_eq!(module_of("conv3d_bwd_input_bf16").map(|m| m.name), Some("unetr_conv3d"));
        assert_eq!(module_of("attn_fwd_f64").map(|m| m.name), Some("unetr_attention"));
        assert!(module_of("conv3d_bwd_input").is_none());
        assert!(module_of("softmax_f16").is_none());
        let all: Vec<String> = MODULES.iter().flat_map(|m| m.entry_points()).collect();
        assert_eq!(all.len(), 30);
        for e in &all {
            assert_eq!(MODULES.iter().filter(|m| m.entry_points().any(|x| &x == e)).count(), 1, "{e}");
            let m = module_of(e).unwrap();
            assert!(m.source.contains(&format!("{}_##S(", e.rsplit_once('_').unwrap().0)), "{} does not define {e}", m.file);
        }
    }
}
