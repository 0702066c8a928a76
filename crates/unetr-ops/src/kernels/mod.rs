//! CPU kernels on plain slices (contiguous, row-major). The tensor-level ops in the crate root
//! check shapes, make inputs contiguous and dispatch here.

pub mod activation;
pub mod attention;
pub mod conv3d;
mod conv3d_s1;
mod direct_avx512;
pub mod norm;
mod spatial_avx512;
mod winograd;

use num_traits::Float;

/// Element types the CPU kernels are written for (f32, f64); conversions come from `WithDType`.
pub trait Elem:
    Float + candle_core::WithDType + Send + Sync + Copy + std::iter::Sum + std::fmt::Debug + 'static
{
    /// The error function: exact (libm) in f64; in f32 a branch-free rational approximation that
    /// vectorises (Eigen's `generic_fast_erf_float`, within a few ulp of erff; erf(+-4) rounds to +-1 in f32). Plain
    /// multiply-adds, not `mul_add`, which is a libm call where FMA is not enabled.
    fn erf_v(self) -> Self;
    /// e^x: std's in f64; in f32 a branch-free Cephes-style polynomial that vectorises (within 2 ulp of expf
    /// for x in [-87, 88]; below that 0 after clamping to e^-87.3; NaN stays NaN).
    fn exp_v(self) -> Self;
}
impl Elem for f32 {
    #[inline(always)]
    fn erf_v(self) -> f32 {
        let x = self.clamp(-4.0, 4.0);
        let x2 = x * x;
        let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
        p = x2 * p + -2.101_024e-6;
        p = x2 * p + -5.692_506_4e-5;
        p = x2 * p + -7.349_906_3e-4;
        p = x2 * p + -2.954_600_5e-3;
        p = x2 * p + -1.609_603_3e-2;
        let mut q = x2 * -1.456_607_2e-5 + -2.133_740_6e-4;
        q = x2 * q + -1.682_827e-3;
        q = x2 * q + -7.373_329e-3;
        q = x2 * q + -1.426_474e-2;
        x * p / q
    }
    #[inline(always)]
    fn exp_v(self) -> f32 {
        let x = self.clamp(-87.3, 88.0);
        // x = n ln2 + r, |r| <= ln2 / 2; ln2 in two parts so that n * C1 is exact.
        let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
        let r = x - n * 0.693_359_4 + n * 2.121_944_4e-4;
        let mut p = 1.987_569_1e-4f32;
        p = p * r + 1.398_199_9e-3;
        p = p * r + 8.333_452e-3;
        p = p * r + 4.166_579_6e-2;
        p = p * r + 0.166_666_65;
        p = p * r + 0.5;
        let y = p * r * r + r + 1.0;
        // 2^n by building the exponent bits (n in [-126, 127] after the clamp): adding 2^23 puts the integer
        // n + 127 in the low mantissa bits, a bit cast reads it (`as i32` would not vectorise).
        let e = (n + (127.0 + 8_388_608.0))
            .to_bits()
            .wrapping_sub(0x4B00_0000)
            << 23;
        y * f32::from_bits(e)
    }
}
impl Elem for f64 {
    #[inline(always)]
    fn erf_v(self) -> f64 {
        libm::erf(self)
    }
    #[inline(always)]
    fn exp_v(self) -> f64 {
        self.exp()
    }
}

// `Float` and `WithDType` both name a `to_f64`; these say which one is meant.
#[inline]
pub(crate) fn f64_of<T: Elem>(v: T) -> f64 {
    candle_core::WithDType::to_f64(v)
}
#[inline]
pub(crate) fn of_f64<T: Elem>(v: f64) -> T {
    candle_core::WithDType::from_f64(v)
}

/// A raw pointer that may cross threads; every user writes a region no other thread touches.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub *mut T);
unsafe impl<T> Send for SyncPtr<T> {}
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    /// A method (not `.0`) so closures capture the whole `Sync` wrapper, not the raw field.
    pub fn ptr(&self) -> *mut T {
        self.0
    }
    /// # Safety
    /// The caller guarantees `[off, off + len)` is in bounds and not aliased by another thread.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// A strided matrix view for [`matmul`]: element (r, c) lives at `ptr + r * rs + c * cs`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<T> {
    pub ptr: *const T,
    pub rs: isize,
    pub cs: isize,
}
unsafe impl<T> Send for Mat<T> {}
unsafe impl<T> Sync for Mat<T> {}
impl<T> Mat<T> {
    pub fn rows(ptr: *const T, row_stride: usize) -> Self {
        Mat {
            ptr,
            rs: row_stride as isize,
            cs: 1,
        }
    }
    /// The view from column `c0` on (a method, so closures capture the whole `Sync` view).
    pub fn cols_from(&self, c0: usize) -> Self {
        Mat {
            ptr: self.ptr.wrapping_offset(c0 as isize * self.cs),
            rs: self.rs,
            cs: self.cs,
        }
    }
    /// The transpose of a row-major matrix with the given row stride.
    pub fn t(ptr: *const T, row_stride: usize) -> Self {
        Mat {
            ptr,
            rs: 1,
            cs: row_stride as isize,
        }
    }
}

/// dst[m x n] (row stride `dst_rs`) = (accumulate ? dst : 0) + a[m x k] * b[k x n], single-threaded:
/// callers parallelise over tiles, which keeps each tile's working set in one core's cache.
///
/// # Safety
/// All views must be valid for the given sizes; `dst` must not alias `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
) {
    matmul_scaled(m, n, k, dst, dst_rs, a, b, accumulate, T::one())
}

/// [`matmul`] with the product scaled: dst = (accumulate ? dst : 0) + scale * a b.
///
/// # Safety
/// As [`matmul`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_scaled<T: Elem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    a: Mat<T>,
    b: Mat<T>,
    accumulate: bool,
    scale: T,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                std::slice::from_raw_parts_mut(dst.add(r * dst_rs), n).fill(T::zero());
            }
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs,
        a.rs,
        b.ptr,
        b.cs,
        b.rs,
        T::one(),
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<f64>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` on a per-thread buffer of `len` elements with unspecified contents (callers write before
/// reading). Tile buffers are MBs: allocating them per tile makes glibc mmap/munmap each one, and the
/// TLB shootdowns of those unmaps cost more than the tile's arithmetic.
pub(crate) fn with_scratch<T: Elem, R>(len: usize, f: impl FnOnce(&mut [T]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut v = cell.borrow_mut();
        let words = (len * std::mem::size_of::<T>()).div_ceil(8);
        if v.len() < words {
            v.resize(words, 0.0);
        }
        // SAFETY: f64 storage is aligned for f32 and f64 and holds at least len elements of T;
        // every bit pattern is a valid float.
        let s = unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut T, len) };
        f(s)
    })
}

/// A zero-filled buffer whose pages were first touched by writes. `vec![0; n]` of a large n maps
/// the kernel's shared zero page; a kernel that then reads before writing (accumulation) takes a
/// copy-on-write fault per page, each with a TLB shootdown to the other cores: slower than the math.
pub(crate) fn zeros_written<T: Elem>(n: usize) -> Vec<T> {
    use rayon::prelude::*;
    let mut v: Vec<T> = Vec::with_capacity(n);
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 16)
        .for_each(|c| {
            c.iter_mut().for_each(|e| {
                e.write(T::zero());
            })
        });
    // SAFETY: all n elements were initialised above.
    unsafe { v.set_len(n) };
    v
}

/// Every target feature the AVX-512 kernels are compiled with (`#[target_feature(enable = ...)]` in this
/// module); the run-time check requires all of them, and a test keeps this list complete.
pub const AVX512_FEATURES: [&str; 5] = ["avx512f", "avx512vl", "avx512dq", "avx2", "fma"];

#[cfg(target_arch = "x86_64")]
fn detected(feature: &str) -> bool {
    match feature {
        "avx512f" => std::is_x86_feature_detected!("avx512f"),
        "avx512vl" => std::is_x86_feature_detected!("avx512vl"),
        "avx512dq" => std::is_x86_feature_detected!("avx512dq"),
        "avx2" => std::is_x86_feature_detected!("avx2"),
        "fma" => std::is_x86_feature_detected!("fma"),
        _ => false,
    }
}

/// Whether the running CPU has every feature in [`AVX512_FEATURES`] (checked once). `UNETR_NO_AVX512=1`
/// forces the portable paths, which is how the tests cover them on an AVX-512 machine.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static OK: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *OK.get_or_init(|| AVX512_FEATURES.iter().all(|f| detected(f)) && std::env::var_os("UNETR_NO_AVX512").is_none())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Defines `$name` that runs `$imp` compiled for AVX-512 when the CPU has it, else the baseline build:
/// the release target is generic x86-64, so without this the element-wise loops get SSE2 only.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident<T: Elem>($($a:ident: $t:ty),* $(,)?) -> $r:ty => $imp:ident) => {
        $(#[$m])*
        $vis fn $name<T: Elem>($($a: $t),*) -> $r {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn v4<T: Elem>($($a: $t),*) -> $r {
                    $imp($($a),*)
                }
                if $crate::kernels::avx512() {
                    // SAFETY: the CPU has the features v4 was compiled for.
                    return unsafe { v4($($a),*) };
                }
            }
            $imp($($a),*)
        }
    };
}
pub(crate) use multiversion;

/// The slice as f32 when T is f32.
pub(crate) fn as_f32<T: Elem>(s: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>())
        // SAFETY: same type, checked above.
        .then(|| unsafe { std::slice::from_raw_parts(s.as_ptr() as *const f32, s.len()) })
}

/// Number of worker threads the kernels split work over.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

#[cfg(test)]
mod tests {
    use super::Elem;

    /// Every feature any kernel source enables is one the run-time check requires: a kernel compiled for a
    /// feature the check skips would fault on a CPU that has AVX-512F but lacks that feature.
    #[test]
    fn run_time_check_covers_every_compiled_feature() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = vec![dir.clone()];
        let mut seen = std::collections::BTreeSet::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                files.extend(std::fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                let marker = ["target_feature(enable", " = \""].concat();
                for (i, _) in text.match_indices(&marker) {
                    let rest = &text[i + marker.len()..];
                    let list = &rest[..rest.find('"').unwrap()];
                    seen.extend(list.split(',').map(|f| f.trim().to_string()));
                }
            }
        }
        assert!(seen.contains("avx512f"), "the scan found the kernels: {seen:?}");
        for f in &seen {
            assert!(super::AVX512_FEATURES.contains(&f.as_str()), "{f} is compiled in but not checked at run time");
        }
    }

    /// The vectorisable f32 exp and erf against f64 libm over their working ranges.
    #[test]
    fn f32_exp_and_erf_are_accurate() {
        let (mut worst_exp, mut worst_erf) = (0f64, 0f64);
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f64 / 200_000.0;
            let e = (x as f32).exp_v() as f64;
            let r = (x as f32 as f64).exp();
            worst_exp = worst_exp.max((e - r).abs() / r);
            let z = -6.0 + 12.0 * i as f64 / 200_000.0;
            let e = (z as f32).erf_v() as f64;
            worst_erf = worst_erf.max((e - libm::erf(z as f32 as f64)).abs());
        }
        assert!(
            worst_exp < 4.0 * f32::EPSILON as f64,
            "exp max relative error {worst_exp:e}"
        );
        assert!(
            worst_erf < 4.0 * f32::EPSILON as f64,
            "erf max absolute error {worst_erf:e}"
        );
        assert!(f32::NAN.exp_v().is_nan() && f32::NAN.erf_v().is_nan());
        assert!((-1000f32).exp_v() < 1e-37);
        assert_eq!(0f32.exp_v(), 1.0);
    }
}
