//! With the `ptx` feature: compiles every `src/*.cu` module to PTX with nvcc, as candle-kernels does, so a
//! kernel that does not compile fails the build rather than a run on a GPU machine.
//!
//! nvcc is `$NVCC`, else `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, `nvcc` on PATH, `/usr/local/cuda/bin/nvcc`.
//! The PTX targets the virtual architecture `compute_<cap>` with cap from `$UNETR_CUDA_ARCH`, else
//! `$CUDA_COMPUTE_CAP` (candle-kernels reads the same variable), else 80; the driver JIT-compiles it for the
//! GPU it runs on, which must be of that architecture or newer.

use std::path::{Path, PathBuf};
use std::process::Command;

const MODULES: [&str; 4] = ["conv3d", "norm", "activation", "attention"];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src/common.cuh");
    for m in MODULES {
        println!("cargo:rerun-if-changed=src/{m}.cu");
    }
    if std::env::var_os("CARGO_FEATURE_PTX").is_none() {
        return;
    }
    // Only where nvcc runs: a CPU build must not rebuild its dependents when PATH changes.
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "PATH", "UNETR_CUDA_ARCH", "CUDA_COMPUTE_CAP"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = nvcc().unwrap_or_else(|| {
        fail("nvcc not found: set NVCC or CUDA_HOME, put nvcc on PATH, or (on a machine without CUDA) source ../shared/tools/cuda-toolchain.sh")
    });
    let arch = arch();
    for m in MODULES {
        compile(&nvcc, m, &arch, &out);
    }
}

fn compile(nvcc: &Path, module: &str, arch: &str, out: &Path) {
    let src = Path::new("src").join(format!("{module}.cu"));
    let ptx = out.join(format!("{module}.ptx"));
    let res = Command::new(nvcc)
        .args(["--ptx", "-O3", "-std=c++17", "--Werror", "all-warnings"])
        .arg(format!("--gpu-architecture=compute_{arch}"))
        .arg("-Isrc")
        .arg("-o")
        .arg(&ptx)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| fail(&format!("could not run {}: {e}", nvcc.display())));
    if !res.status.success() {
        fail(&format!(
            "nvcc could not compile {} for compute_{arch}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        ));
    }
}

fn nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        return Some(p.into());
    }
    let homes = ["CUDA_HOME", "CUDA_PATH"].into_iter().filter_map(std::env::var_os).map(|h| PathBuf::from(h).join("bin/nvcc"));
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).map(|d| d.join("nvcc")).collect::<Vec<_>>());
    homes.chain(on_path).chain([PathBuf::from("/usr/local/cuda/bin/nvcc")]).find(|p| p.is_file())
}

/// The compute capability as nvcc spells it (`90` for 9.0); refuses anything but digits.
fn arch() -> String {
    let raw = std::env::var("UNETR_CUDA_ARCH").or_else(|_| std::env::var("CUDA_COMPUTE_CAP")).unwrap_or_else(|_| "80".into());
    let cap = raw.trim().replace('.', "");
    if cap.is_empty() || !cap.bytes().all(|b| b.is_ascii_digit()) {
        fail(&format!("UNETR_CUDA_ARCH / CUDA_COMPUTE_CAP = {raw:?}: expected a compute capability such as 80 or 9.0"));
    }
    cap
}

fn fail(msg: &str) -> ! {
    eprintln!("error: unetr-kernels: {msg}");
    std::process::exit(1)
}
