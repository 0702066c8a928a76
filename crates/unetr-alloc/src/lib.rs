//! A global allocator for UNETR's workloads.
//!
//! UNETR's activations and weights are a few hundred blocks of 1-120 MB, and a forward pass allocates the
//! same sizes again and again. General-purpose allocators either return such blocks to the OS at once (glibc
//! above 32 MB: every op then pays for fresh, zeroed pages, 30% of a training step) or keep them without a
//! bound (mimalloc with purging off: the process's resident memory ends up ~40% above what it ever held live).
//! [`Pooled`] takes the middle road for blocks of at least [`LARGE`] bytes (or a higher threshold, see
//! [`Pooling`]: splitting and moving pages costs system calls that small blocks do not repay when many sizes
//! come and go, as in training on small crops): they are mapped directly and,
//! when freed, kept in a pool for reuse (blocks under 8 MB rounded up to one of eight size classes per power
//! of two, so that sizes meet exactly; same size first, else a slightly larger block shrunk with
//! `mremap`, else, when a new block would not fit under the bound, the pooled block closest in size
//! resized), and the pool is trimmed, oldest first, so that live plus pooled bytes never exceed the
//! highest live total so far. The resident heap thus stays at the live peak, and a steady state
//! (repeated forward passes, training steps) reuses pages instead of faulting new ones. Smaller blocks go to
//! the wrapped allocator. The wrapper also counts live bytes and their peak, which `bench` reports.
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: unetr_alloc::Pooled<mimalloc::MiMalloc> = unetr_alloc::Pooled::new(mimalloc::MiMalloc);
//! ```

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicUsize, Ordering::{AcqRel, Acquire, Relaxed}};
use std::sync::Mutex;

/// Blocks of at least this many bytes are pooled (smaller ones go to the wrapped allocator). 256 KiB: the
/// ViT's per-token activations (0.3-2.6 MB at 96^3) are pooled too; at 1 MiB mimalloc's share of the
/// peak RSS was 16 MB larger (measured at 96^3, 0.553 -> 0.537 GB).
pub const LARGE: usize = 1 << 18;
const PAGE: usize = 4096;
/// `mode`'s low bit: a block of at least [`LARGE`] bytes was requested, so the pooling choice is fixed.
const STARTED: usize = 1;
/// `mode`'s threshold when pooling is off (no block is that large).
const OFF: usize = usize::MAX & !STARTED;
/// Pool slots; more freed blocks than this evict the oldest.
const SLOTS: usize = 1024;

/// The pooling, counting wrapper around `A` (see the crate docs).
pub struct Pooled<A> {
    inner: A,
    live: AtomicUsize,
    peak: AtomicUsize,
    fresh: AtomicUsize,
    /// The smallest pooled block size (a multiple of the page size; [`OFF`]: everything goes to the inner
    /// allocator), or'ed with [`STARTED`]. One atomic, so that a switch and a first allocation on another
    /// thread cannot interleave (a block must be freed by whoever made it).
    mode: AtomicUsize,
    pool: Mutex<Pool>,
}

/// Which blocks [`Pooled`] pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// None: the inner allocator serves every block.
    Off,
    /// Blocks of at least this many bytes (at least [`LARGE`]).
    From(usize),
}

/// Freed large blocks, oldest first: (address, mapped length).
struct Pool {
    blocks: [(usize, usize); SLOTS],
    n: usize,
    bytes: usize,
}

impl<A> Pooled<A> {
    pub const fn new(inner: A) -> Self {
        Self {
            inner,
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            fresh: AtomicUsize::new(0),
            mode: AtomicUsize::new(LARGE),
            pool: Mutex::new(Pool {
                blocks: [(0, 0); SLOTS],
                n: 0,
                bytes: 0,
            }),
        }
    }
    /// Bytes allocated and not yet freed (large blocks counted in whole pages).
    pub fn live(&self) -> usize {
        self.live.load(Relaxed)
    }
    /// The highest [`live`](Self::live) so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Relaxed)
    }
    /// Restarts the [`peak`](Self::peak) from the current live bytes (to measure one phase's peak).
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Relaxed);
    }
    /// Bytes of large blocks mapped afresh or grown so far (each page of them faulted in when first
    /// written): what the pool could not serve from pages it had.
    pub fn fresh(&self) -> usize {
        self.fresh.load(Relaxed)
    }
    /// Bytes of freed large blocks held for reuse.
    pub fn pooled(&self) -> usize {
        self.pool.lock().map(|p| p.bytes).unwrap_or(0)
    }
    /// Which blocks are pooled (default: from [`LARGE`] bytes; off: the inner allocator serves
    /// everything, the counters keep counting). Only before the first block of [`LARGE`] bytes or more was
    /// allocated, since a block must be freed by whoever made it; returns whether the setting took effect.
    pub fn set_pooling(&self, pooling: Pooling) -> bool {
        let want = match pooling {
            Pooling::Off => OFF,
            Pooling::From(n) => pages(n.max(LARGE)),
        };
        let mut cur = self.mode.load(Acquire);
        loop {
            if cur & STARTED != 0 {
                return (cur & !STARTED) == want;
            }
            match self.mode.compare_exchange_weak(cur, want, AcqRel, Acquire) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }
    fn grew(&self, n: usize) -> usize {
        let now = self.live.fetch_add(n, Relaxed) + n;
        self.peak.fetch_max(now, Relaxed);
        now
    }
}

impl<A> Pooled<A> {
    /// Whether this layout is served by the pool. The first request of [`LARGE`] bytes or more (the
    /// smallest threshold there can be) fixes the pooling choice, whichever it was at that instant, so that
    /// every block is freed the way it was made.
    fn is_large(&self, l: &Layout) -> bool {
        if !(cfg!(target_os = "linux") && l.size() >= LARGE && l.align() <= PAGE) {
            return false;
        }
        let m = self.mode.load(Acquire);
        let m = if m & STARTED != 0 { m } else { self.mode.fetch_or(STARTED, AcqRel) };
        l.size() >= m & !STARTED
    }
}

fn pages(n: usize) -> usize {
    n.div_ceil(PAGE) * PAGE
}

/// Blocks below this are rounded up to a size class, so that the many sizes a run on small crops frees
/// and asks for again meet exactly instead of being split and joined with system calls.
const CLASSED: usize = 8 << 20;

/// The bytes a pooled block of `n` requested bytes spans: whole pages; below [`CLASSED`], the next of
/// eight size classes per power of two (at most an eighth more; the pages beyond the request are mapped
/// but stay untouched, so not resident).
fn block(n: usize) -> usize {
    if n >= CLASSED {
        return pages(n);
    }
    let step = (n.next_power_of_two() / 16).max(PAGE);
    pages(n.div_ceil(step) * step)
}

#[cfg(target_os = "linux")]
mod map {
    /// A fresh zeroed mapping of `n` bytes, or null.
    pub unsafe fn fresh(n: usize) -> *mut u8 {
        let p = reserve(n);
        // Transparent huge pages where the system offers them on request: a fresh block's first touch then
        // costs one fault per 2 MB instead of per 4 KB (minor faults of 6 forwards at 96^3: 565k -> 203k).
        if !p.is_null() && n >= 4 << 20 {
            libc::madvise(p.cast(), n, libc::MADV_HUGEPAGE);
        }
        p
    }
    /// An address range of `n` bytes (mapped, no page of it touched yet), or null; [`move_to`] fills
    /// ranges like it with existing pages.
    pub unsafe fn reserve(n: usize) -> *mut u8 {
        let p = libc::mmap(
            std::ptr::null_mut(),
            n,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            p.cast()
        }
    }
    /// Moves the pages of `[p, p + n)` to `[to, to + n)` (replacing what is mapped there), without copying;
    /// false on failure (the source then stays mapped).
    pub unsafe fn move_to(p: usize, n: usize, to: usize) -> bool {
        let q = libc::mremap(
            p as *mut libc::c_void,
            n,
            n,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        );
        q != libc::MAP_FAILED
    }
    /// Resize a mapping (may move it); null on failure, the old mapping then stays valid.
    pub unsafe fn resize(p: usize, old: usize, new: usize) -> *mut u8 {
        let q = libc::mremap(p as *mut libc::c_void, old, new, libc::MREMAP_MAYMOVE);
        if q == libc::MAP_FAILED {
            std::ptr::null_mut()
        } else {
            q.cast()
        }
    }
    pub unsafe fn unmap(p: usize, n: usize) {
        libc::munmap(p as *mut libc::c_void, n);
    }
}

#[cfg(not(target_os = "linux"))]
mod map {
    pub unsafe fn fresh(_: usize) -> *mut u8 {
        unreachable!("large blocks are pooled on Linux only")
    }
    pub unsafe fn resize(_: usize, _: usize, _: usize) -> *mut u8 {
        unreachable!()
    }
    pub unsafe fn reserve(_: usize) -> *mut u8 {
        unreachable!()
    }
    pub unsafe fn move_to(_: usize, _: usize, _: usize) -> bool {
        unreachable!()
    }
    pub unsafe fn unmap(_: usize, _: usize) {}
}

impl Pool {
    fn take(&mut self, i: usize) -> (usize, usize) {
        let b = self.blocks[i];
        self.blocks.copy_within(i + 1..self.n, i);
        self.n -= 1;
        self.bytes -= b.1;
        b
    }
    /// A block of exactly `n` bytes made of pages the pool has where it can, whether it is known to be
    /// zero, and the bytes newly mapped (to be faulted in): a pooled block of that size; else the smallest
    /// larger one, its tail moved to a new address with `mremap` and kept; else (only smaller blocks) a new
    /// range filled with pooled blocks' pages, largest first, again by moving them (the rest of the range
    /// is new). Moving pages costs page-table updates; new pages cost a fault and zeroing each (at 96^3 the
    /// forward's stages need different block sizes, and resizing the closest block mapped 185 MB afresh
    /// per forward).
    unsafe fn get(&mut self, n: usize) -> (*mut u8, bool, usize) {
        if let Some(i) = self.blocks[..self.n].iter().position(|b| b.1 == n) {
            return (self.take(i).0 as *mut u8, false, 0);
        }
        let larger = (0..self.n)
            .filter(|&i| self.blocks[i].1 > n)
            .min_by_key(|&i| self.blocks[i].1);
        if let Some(i) = larger {
            let (p, len) = self.take(i);
            self.keep_tail(p, n, len);
            return (p as *mut u8, false, 0);
        }
        let dst = map::fresh(n);
        if dst.is_null() {
            return (dst, true, 0);
        }
        let mut off = 0;
        while off < n && self.n > 0 {
            let i = (0..self.n).max_by_key(|&i| self.blocks[i].1).expect("n > 0");
            let (p, len) = self.take(i);
            let used = len.min(n - off);
            self.keep_tail(p, used, len);
            if !map::move_to(p, used, dst as usize + off) {
                map::unmap(p, used);
                break;
            }
            off += used;
        }
        (dst, off == 0, n - off)
    }
    /// Keeps bytes `n..len` of the block at `p` as a pooled block of their own (moved to a new address),
    /// or unmaps them if that fails. Nothing when `n == len`.
    unsafe fn keep_tail(&mut self, p: usize, n: usize, len: usize) {
        if n == len {
            return;
        }
        let t = map::reserve(len - n);
        if !t.is_null() && map::move_to(p + n, len - n, t as usize) {
            self.put(t as usize, len - n);
        } else {
            map::unmap(p + n, len - n);
            if !t.is_null() {
                map::unmap(t as usize, len - n);
            }
        }
    }
    /// Unmap the oldest blocks until `live + pooled <= bound`.
    unsafe fn trim(&mut self, live: usize, bound: usize) {
        while self.n > 0 && live + self.bytes > bound {
            let (p, len) = self.take(0);
            map::unmap(p, len);
        }
    }
    unsafe fn put(&mut self, p: usize, n: usize) {
        if self.n == SLOTS {
            let (q, len) = self.take(0);
            map::unmap(q, len);
        }
        self.blocks[self.n] = (p, n);
        self.n += 1;
        self.bytes += n;
    }
}

impl<A: GlobalAlloc> Pooled<A> {
    unsafe fn large(&self, l: Layout, zero: bool) -> *mut u8 {
        let n = block(l.size());
        let Ok(mut pool) = self.pool.lock() else {
            return std::ptr::null_mut();
        };
        let (p, fresh, new) = pool.get(n);
        if p.is_null() {
            return p;
        }
        self.fresh.fetch_add(new, Relaxed);
        let live = self.grew(n);
        pool.trim(live, self.peak());
        drop(pool);
        if zero && !fresh {
            std::ptr::write_bytes(p, 0, l.size());
        }
        p
    }
}

// SAFETY: small blocks are the inner allocator's; large blocks are page-aligned private mappings of at
// least the requested size, each handed out once (the pool's lock guards the free list), and returned to
// the pool or unmapped only through `dealloc`/`realloc` with the same layout.
unsafe impl<A: GlobalAlloc> GlobalAlloc for Pooled<A> {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        if self.is_large(&l) {
            return self.large(l, false);
        }
        let p = self.inner.alloc(l);
        if !p.is_null() {
            self.grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        if self.is_large(&l) {
            return self.large(l, true);
        }
        let p = self.inner.alloc_zeroed(l);
        if !p.is_null() {
            self.grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        if self.is_large(&l) {
            let n = block(l.size());
            self.live.fetch_sub(n, Relaxed);
            match self.pool.lock() {
                Ok(mut pool) => pool.put(p as usize, n),
                Err(_) => map::unmap(p as usize, n),
            }
            return;
        }
        self.inner.dealloc(p, l);
        self.live.fetch_sub(l.size(), Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let nl = Layout::from_size_align_unchecked(new, l.align());
        match (self.is_large(&l), self.is_large(&nl)) {
            (true, true) => {
                let (old, n) = (block(l.size()), block(new));
                let q = map::resize(p as usize, old, n);
                if !q.is_null() {
                    self.live.fetch_sub(old, Relaxed);
                    self.grew(n);
                    return q;
                }
                // A block joined from several pooled ones spans several mappings, which `mremap` cannot
                // resize: a new block and a copy.
                let q = self.alloc(nl);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                    self.dealloc(p, l);
                }
                q
            }
            (false, false) => {
                let q = self.inner.realloc(p, l, new);
                if !q.is_null() {
                    self.live.fetch_sub(l.size(), Relaxed);
                    self.grew(new);
                }
                q
            }
            _ => {
                let q = self.alloc(nl);
                if !q.is_null() {
                    std::ptr::copy_nonoverlapping(p, q, l.size().min(new));
                    self.dealloc(p, l);
                }
                q
            }
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::alloc::System;

    fn l(n: usize) -> Layout {
        Layout::from_size_align(n, 8).unwrap()
    }

    /// Same-size blocks are reused, zeroed requests see zeros, and live plus pooled bytes stay at the peak.
    #[test]
    fn reuses_blocks_within_the_live_peak() {
        let a = Pooled::new(System);
        unsafe {
            let (m, n) = (3 << 20, 5 << 20);
            let p = a.alloc(l(m));
            std::ptr::write_bytes(p, 7, m);
            let q = a.alloc(l(n));
            assert_eq!((a.live(), a.peak()), (m + n, m + n));
            a.dealloc(p, l(m));
            assert_eq!((a.live(), a.pooled()), (n, m));
            // the same size again: the pooled block, zeroed on request
            let p2 = a.alloc_zeroed(l(m));
            assert_eq!(p2, p);
            assert!(std::slice::from_raw_parts(p2, m).iter().all(|&b| b == 0));
            assert_eq!(a.fresh(), m + n);
            a.dealloc(p2, l(m));
            a.dealloc(q, l(n));
            assert_eq!((a.live(), a.pooled()), (0, m + n));
            // a new size: pooled blocks are dropped, oldest first, so that live + pooled <= peak
            let r = a.alloc(l(6 << 20));
            assert!(
                a.live() + a.pooled() <= a.peak(),
                "{} + {} > {}",
                a.live(),
                a.pooled(),
                a.peak()
            );
            // a smaller request takes a pooled block's pages
            a.dealloc(r, l(6 << 20));
            let f = a.fresh();
            let s = a.alloc(l(5 << 20));
            assert_eq!(a.fresh(), f);
            a.dealloc(s, l(5 << 20));
        }
    }

    /// Growing and shrinking across the threshold keeps the contents.
    #[test]
    fn realloc_keeps_contents() {
        let a = Pooled::new(System);
        unsafe {
            let p = a.alloc(l(1000));
            for i in 0..1000 {
                *p.add(i) = i as u8;
            }
            let p = a.realloc(p, l(1000), 2 << 20);
            let p = a.realloc(p, l(2 << 20), 3 << 20);
            assert!((0..1000).all(|i| *p.add(i) == i as u8));
            let p = a.realloc(p, l(3 << 20), 500);
            assert!((0..500).all(|i| *p.add(i) == i as u8));
            a.dealloc(p, l(500));
            assert_eq!(a.live(), 0);
        }
    }

    /// Pooling switches off only before the first large block; off, large blocks go to the inner allocator.
    #[test]
    fn pooling_switch() {
        let a = Pooled::new(System);
        assert!(a.set_pooling(Pooling::Off));
        unsafe {
            let p = a.alloc(l(2 << 20));
            assert_eq!((a.fresh(), a.live()), (0, 2 << 20));
            a.dealloc(p, l(2 << 20));
            assert_eq!(a.pooled(), 0);
        }
        let b = Pooled::new(System);
        unsafe {
            let p = b.alloc(l(2 << 20));
            assert!(
                !b.set_pooling(Pooling::Off),
                "a pooled block exists: the switch must be refused"
            );
            b.dealloc(p, l(2 << 20));
            assert_eq!(b.pooled(), 2 << 20);
        }
    }

    /// A switch racing a first large allocation on another thread: either the switch is refused and the
    /// block was pooled, or it took effect and the block came from the inner allocator; never a pooled
    /// block freed as an inner one (or the reverse), and a block allocated while the pool was off does not
    /// let the pool be switched on later.
    #[test]
    fn pooling_switch_races_a_first_allocation() {
        for round in 0..300 {
            let a = std::sync::Arc::new(Pooled::new(System));
            let go = std::sync::Arc::new(std::sync::Barrier::new(2));
            let (a2, go2) = (a.clone(), go.clone());
            let t = std::thread::spawn(move || {
                go2.wait();
                unsafe {
                    let p = a2.alloc(l(1 << 20));
                    std::ptr::write_bytes(p, 7, 1 << 20);
                    a2.dealloc(p, l(1 << 20));
                }
            });
            go.wait();
            let switched = a.set_pooling(Pooling::Off);
            t.join().unwrap();
            assert_eq!(a.pooled() == 0, switched, "round {round}: switched {switched}, pooled {}", a.pooled());
            assert_eq!(a.live(), 0);
        }
        let c = Pooled::new(System);
        assert!(c.set_pooling(Pooling::Off));
        unsafe {
            let p = c.alloc(l(1 << 20));
            assert!(!c.set_pooling(Pooling::From(LARGE)), "an inner block exists: pooling may not start");
            c.dealloc(p, l(1 << 20));
        }
    }

    /// A smaller request splits a pooled block and keeps its tail; a larger one is built from the pooled
    /// blocks' pages; neither maps more than it must, and zeroed requests see zeros.
    #[test]
    fn misses_split_and_join_pooled_pages() {
        let a = Pooled::new(System);
        unsafe {
            let (p, q) = (a.alloc(l(4 << 20)), a.alloc(l(8 << 20)));
            std::ptr::write_bytes(p, 1, 4 << 20);
            std::ptr::write_bytes(q, 2, 8 << 20);
            a.dealloc(p, l(4 << 20));
            a.dealloc(q, l(8 << 20));
            let f = a.fresh();
            // 6 MB: the 8 MB block, its last 2 MB kept in the pool
            let r = a.alloc(l(6 << 20));
            assert_eq!(a.fresh(), f);
            assert_eq!(a.pooled(), 6 << 20);
            // 7 MB from the 4 + 2 MB left: only 1 MB is new, and all of it reads as zero
            let s = a.alloc_zeroed(l(7 << 20));
            assert_eq!(a.fresh() - f, 1 << 20);
            assert_eq!(a.pooled(), 0);
            assert!(std::slice::from_raw_parts(s, 7 << 20).iter().all(|&b| b == 0));
            std::ptr::write_bytes(s, 3, 7 << 20);
            std::ptr::write_bytes(r, 4, 6 << 20);
            assert!(a.live() + a.pooled() <= a.peak());
            // the joined block spans several mappings: growing it copies, and keeps the contents
            let s = a.realloc(s, l(7 << 20), 9 << 20);
            assert!(!s.is_null());
            assert!(std::slice::from_raw_parts(s, 7 << 20).iter().all(|&b| b == 3));
            std::ptr::write_bytes(s, 5, 9 << 20);
            a.dealloc(r, l(6 << 20));
            a.dealloc(s, l(9 << 20));
            assert_eq!(a.live(), 0);
        }
    }

    /// Below CLASSED, nearby sizes share a size class (at most an eighth above the request, whole pages), so
    /// a block freed at one size serves the next request of a similar size without splitting or mapping.
    #[test]
    fn nearby_sizes_share_a_size_class() {
        for n in [LARGE, LARGE + 1, 1_000_000, 3 << 20, (3 << 20) + 12345, CLASSED - 1] {
            let b = block(n);
            assert!(b >= n && b % PAGE == 0 && (b - n) * 8 <= n + 8 * PAGE, "{n} -> {b}");
        }
        assert_eq!(block(CLASSED + 1), pages(CLASSED + 1));
        let a = Pooled::new(System);
        unsafe {
            let p = a.alloc(l(3_100_000));
            a.dealloc(p, l(3_100_000));
            let f = a.fresh();
            let q = a.alloc_zeroed(l(3_140_000));
            assert_eq!((q, a.fresh(), a.pooled()), (p, f, 0));
            assert!(std::slice::from_raw_parts(q, 3_140_000).iter().all(|&b| b == 0));
            a.dealloc(q, l(3_140_000));
            assert_eq!(a.live(), 0);
        }
    }

    /// With a higher threshold, blocks below it go to the inner allocator and blocks above it are pooled;
    /// the threshold is fixed by the first block of LARGE bytes or more.
    #[test]
    fn pooling_from_a_threshold() {
        let a = Pooled::new(System);
        assert!(a.set_pooling(Pooling::From(4 << 20)));
        unsafe {
            let p = a.alloc(l(2 << 20));
            assert_eq!((a.fresh(), a.live()), (0, 2 << 20));
            assert!(!a.set_pooling(Pooling::From(LARGE)), "a block was made: the threshold is fixed");
            assert!(a.set_pooling(Pooling::From(4 << 20)), "the same setting again is no change");
            let q = a.alloc(l(4 << 20));
            assert_eq!(a.fresh(), 4 << 20);
            a.dealloc(p, l(2 << 20));
            a.dealloc(q, l(4 << 20));
            assert_eq!((a.pooled(), a.live()), (4 << 20, 0));
        }
    }
}
