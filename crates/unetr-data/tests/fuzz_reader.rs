//! A bounded mutation fuzzer for the NIfTI reader (cargo-fuzz needs a nightly toolchain, which this
//! project's machines do not have): every committed fixture, with random byte flips in the header and data,
//! truncations and garbage appended, raw and re-compressed, must give Ok or an error, never a panic.
//! `UNETR_FUZZ_ITERS` sets the iterations (default 4000; docs/data.md records a longer run).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::io::{Read, Write};
use unetr_data::nifti::{read_nifti, ReadOptions};

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b).read_to_end(&mut out).unwrap();
    out
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

#[test]
fn mutated_files_never_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.to_string_lossy().to_string();
        if name.ends_with(".nii.gz") {
            seeds.push(gunzip(&std::fs::read(&p).unwrap()));
        } else if name.ends_with(".nii") {
            seeds.push(std::fs::read(&p).unwrap());
        }
    }
    assert!(seeds.len() >= 5);
    let iters: usize = std::env::var("UNETR_FUZZ_ITERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
    let mut rng = ChaCha8Rng::seed_from_u64(std::env::var("UNETR_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(1));
    let tmp = std::env::temp_dir().join(format!("unetr-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let opts = ReadOptions { max_bytes: 64 << 20, ..Default::default() };
    let (mut ok, mut err) = (0usize, 0usize);
    for i in 0..iters {
        let mut b = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..8) {
            match rng.random_range(0..6) {
                // Header fields are where lies hurt: bias mutations to the first 352 bytes.
                0..=2 if !b.is_empty() => {
                    let at = if rng.random_bool(0.8) { rng.random_range(0..b.len().min(352)) } else { rng.random_range(0..b.len()) };
                    b[at] = rng.random();
                }
                3 if b.len() > 1 => {
                    let n = rng.random_range(0..b.len());
                    b.truncate(n);
                }
                4 => b.extend((0..rng.random_range(1..64)).map(|_| rng.random::<u8>())),
                _ if b.len() >= 80 => {
                    // An interesting value in a 2- or 4-byte field.
                    let at = rng.random_range(0..b.len().min(348) - 4);
                    let v: [u8; 4] = [[0, 0, 0, 0], [0xff, 0xff, 0xff, 0xff], [0, 0, 0, 0x80], [0xff, 0x7f, 0, 0], [1, 0, 0, 0]][rng.random_range(0..5)];
                    b[at..at + 4].copy_from_slice(&v);
                }
                _ => {}
            }
        }
        let gz = rng.random_bool(0.5);
        let path = tmp.join(if gz { format!("f{i}.nii.gz") } else { format!("f{i}.nii") });
        let mut bytes = if gz { gzip(&b) } else { b };
        if gz && rng.random_bool(0.2) && bytes.len() > 20 {
            let at = rng.random_range(10..bytes.len());
            bytes[at] ^= 0xa5; // a corrupt compressed stream
        }
        std::fs::write(&path, &bytes).unwrap();
        match std::panic::catch_unwind(|| read_nifti(&path, &opts)) {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(e)) => {
                assert!(e.to_string().contains(&*path.to_string_lossy()), "error without the file name: {e}");
                err += 1
            }
            Err(_) => panic!("read_nifti panicked on mutated input #{i} (kept at {})", path.display()),
        }
        let _ = std::fs::remove_file(&path);
    }
    eprintln!("fuzz: {iters} inputs, {ok} read, {err} rejected with an error, 0 panics");
}
