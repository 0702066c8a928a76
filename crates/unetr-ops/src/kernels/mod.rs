//! CPU kernels on plain slices (contiguous, row-major). The tensor-level ops in the crate root
//! check shapes, make inputs contiguous and dispatch here.

pub mod conv3d;
pub mod norm;
pub mod softmax;

use num_traits::Float;

/// Element types the CPU kernels are written for (f32, f64); conversions come from `WithDType`.
pub trait Elem: Float + candle_core::WithDType + Send + Sync + Copy + std::iter::Sum + std::fmt::Debug + 'static {}
impl Elem for f32 {}
impl Elem for f64 {}

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
        Mat { ptr, rs: row_stride as isize, cs: 1 }
    }
    /// The transpose of a row-major matrix with the given row stride.
    pub fn t(ptr: *const T, row_stride: usize) -> Self {
        Mat { ptr, rs: 1, cs: row_stride as isize }
    }
}

/// dst[m x n] (row stride `dst_rs`) = (accumulate ? dst : 0) + a[m x k] * b[k x n], single-threaded:
/// callers parallelise over tiles, which keeps each tile's working set in one core's cache.
///
/// # Safety
/// All views must be valid for the given sizes; `dst` must not alias `a` or `b`.
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
        T::one(),
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Number of worker threads the kernels split work over.
pub(crate) fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
