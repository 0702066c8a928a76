//! The PTX that nvcc built (feature `ptx`) defines every entry point unetr-ops launches, for the architecture
//! the build asked for. Runs without a GPU: this crate links no CUDA library.
#![cfg(feature = "ptx")]

#[test]
fn nvcc_ptx_defines_every_entry_point() {
    for m in unetr_kernels::MODULES {
        let ptx = m.ptx();
        assert!(ptx.contains(".version") && ptx.contains(".target"), "{}: not PTX", m.file);
        for e in m.entry_points() {
            assert!(ptx.contains(&format!(".entry {e}(")), "the PTX of {} lacks {e}", m.file);
        }
        eprintln!("{}: {} bytes of PTX, {} entry points", m.file, ptx.len(), m.entry_points().count());
    }
}
