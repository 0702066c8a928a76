//! Compiles every kernel module to PTX with NVRTC on a machine without a GPU or nvcc, catching syntax and type
//! errors before a GPU is ever lent, and checks that every entry point the Rust side launches exists for every
//! dtype. (Builds with the `ptx` feature compile the same sources with nvcc; tests/ptx.rs checks those.)
//!
//! libnvrtc comes from the PyPI wheel `nvidia-cuda-nvrtc` (no GPU or driver needed). The test looks in
//! `$UNETR_NVRTC` (the .so file), then the CUDA toolchain of ../shared/tools/cuda-toolchain.sh, then
//! `$CUDA_HOME/lib`; without one it prints a note and passes (`.ci/run` installs the wheel, so CI runs it).

use std::ffi::{c_char, c_int, CString};
use std::path::PathBuf;

fn find_nvrtc() -> Option<PathBuf> {
    let mut c: Vec<PathBuf> = Vec::new();
    if let Ok(p) = std::env::var("UNETR_NVRTC") {
        c.push(p.into());
    }
    if let Ok(h) = std::env::var("HOME") {
        c.push(PathBuf::from(h).join(".cache/cuda13-wheels/root/lib/libnvrtc.so"));
    }
    if let Ok(h) = std::env::var("CUDA_HOME") {
        c.push(PathBuf::from(h).join("lib/libnvrtc.so"));
    }
    c.into_iter().find(|p| p.is_file())
}

type Prog = *mut std::ffi::c_void;

#[test]
fn cuda_kernels_compile_to_ptx_with_nvrtc() {
    let Some(path) = find_nvrtc() else {
        return unetr_testkit::skip_or_fail(module_path!(), "nvrtc", "set UNETR_NVRTC or pip install nvidia-cuda-nvrtc");
    };
    // SAFETY: NVRTC's C API, called with the signatures of nvrtc.h.
    unsafe {
        // libnvrtc opens its builtins library by soname at compile time; load it from the same folder first
        // so that the lookup finds it without LD_LIBRARY_PATH.
        let _builtins = std::fs::read_dir(path.parent().unwrap())
            .ok()
            .and_then(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("libnvrtc-builtins.so."))))
            .map(|p| libloading::Library::new(p).expect("loading libnvrtc-builtins"));
        let lib = libloading::Library::new(&path).expect("loading libnvrtc");
        let create: libloading::Symbol<unsafe extern "C" fn(*mut Prog, *const c_char, *const c_char, c_int, *const *const c_char, *const *const c_char) -> c_int> =
            lib.get(b"nvrtcCreateProgram").unwrap();
        let compile: libloading::Symbol<unsafe extern "C" fn(Prog, c_int, *const *const c_char) -> c_int> = lib.get(b"nvrtcCompileProgram").unwrap();
        let log_size: libloading::Symbol<unsafe extern "C" fn(Prog, *mut usize) -> c_int> = lib.get(b"nvrtcGetProgramLogSize").unwrap();
        let get_log: libloading::Symbol<unsafe extern "C" fn(Prog, *mut c_char) -> c_int> = lib.get(b"nvrtcGetProgramLog").unwrap();
        let ptx_size: libloading::Symbol<unsafe extern "C" fn(Prog, *mut usize) -> c_int> = lib.get(b"nvrtcGetPTXSize").unwrap();
        let get_ptx: libloading::Symbol<unsafe extern "C" fn(Prog, *mut c_char) -> c_int> = lib.get(b"nvrtcGetPTX").unwrap();
        let header = (CString::new(unetr_kernels::COMMON.1).unwrap(), CString::new(unetr_kernels::COMMON.0).unwrap());
        for module in unetr_kernels::MODULES {
            let src = CString::new(module.source).unwrap();
            let name = CString::new(module.file).unwrap();
            // The lent GPUs are sm_90 (H100/H200); also NVRTC's default architecture.
            for arch in [None, Some("--gpu-architecture=compute_90")] {
                let mut prog: Prog = std::ptr::null_mut();
                assert_eq!(create(&mut prog, src.as_ptr(), name.as_ptr(), 1, &header.0.as_ptr(), &header.1.as_ptr()), 0);
                let opts: Vec<CString> = arch.into_iter().map(|a| CString::new(a).unwrap()).collect();
                let ptrs: Vec<*const c_char> = opts.iter().map(|o| o.as_ptr()).collect();
                let rc = compile(prog, ptrs.len() as c_int, ptrs.as_ptr());
                let mut n = 0;
                log_size(prog, &mut n);
                let mut log = vec![0u8; n.max(1)];
                get_log(prog, log.as_mut_ptr() as *mut c_char);
                let log = String::from_utf8_lossy(&log).trim_end_matches('\0').to_string();
                assert_eq!(rc, 0, "NVRTC ({arch:?}) failed on {}:\n{log}", module.file);
                let mut n = 0;
                ptx_size(prog, &mut n);
                let mut ptx = vec![0u8; n];
                get_ptx(prog, ptx.as_mut_ptr() as *mut c_char);
                let ptx = String::from_utf8_lossy(&ptx);
                let entries: Vec<String> = module.entry_points().collect();
                for e in &entries {
                    assert!(ptx.contains(&format!(".entry {e}(")), "PTX of {} ({arch:?}) lacks {e}", module.file);
                }
                eprintln!(
                    "NVRTC {} on {} ({arch:?}): {} bytes of PTX, {} entry points; warnings: {}",
                    path.display(),
                    module.file,
                    ptx.len(),
                    entries.len(),
                    if log.is_empty() { "none" } else { &log }
                );
            }
        }
    }
}
