//! Any byte string (raw or gzip) must give a volume or an error: no panic, no abort, no allocation beyond
//! the configured limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::Path;
use unetr_data::nifti::{read_nifti_bytes, NonFinite, ReadOptions};

fuzz_target!(|data: &[u8]| {
    let opts = ReadOptions { max_bytes: 64 << 20, nonfinite: NonFinite::Fail };
    if let Ok(v) = read_nifti_bytes(Path::new("fuzz.nii"), data, &opts) {
        // What a user does next with a volume must not panic either.
        let _ = (v.shape(), v.spacing(), v.orientation());
        assert_eq!(v.data.len(), v.shape().iter().product::<usize>());
    }
});
