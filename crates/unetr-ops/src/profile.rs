//! A small op-level profiler, in the spirit of `torch.profiler`'s table: while enabled, every op of this crate
//! (forward and backward) and every call site wrapped in [`timed`] adds its wall time to a per-name total.
//! Scopes nest; each records its *self* time (its own time less that of the scopes inside it), so the rows
//! add up to the profiled wall time, and what no scope covers shows as the difference.
//!
//! Off by default; when off, a scope costs one relaxed atomic load. Timings are wall clock on the calling
//! thread; candle's CPU ops are synchronous, so that is the op's time (on CUDA it is only the launch time).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Instant;

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<Option<HashMap<&'static str, (u64, f64)>>> = Mutex::new(None);

thread_local! {
    /// Time spent in child scopes, one entry per open scope on this thread.
    static STACK: RefCell<Vec<f64>> = const { RefCell::new(Vec::new()) };
}

/// One row of the table: calls and self time in seconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct OpTime {
    pub name: String,
    pub calls: u64,
    pub seconds: f64,
}

/// Starts recording (and clears earlier totals).
pub fn enable() {
    *TOTALS.lock().unwrap_or_else(|e| e.into_inner()) = Some(HashMap::new());
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the rows, largest self time first.
pub fn take() -> Vec<OpTime> {
    ENABLED.store(false, Ordering::Relaxed);
    let map = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).take().unwrap_or_default();
    let mut rows: Vec<OpTime> = map
        .into_iter()
        .map(|(name, (calls, seconds))| OpTime { name: name.to_string(), calls, seconds })
        .collect();
    rows.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(&b.name)));
    rows
}

pub fn is_enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Runs `f`, charging its self time to `name` while profiling is on.
pub fn timed<R>(name: &'static str, f: impl FnOnce() -> R) -> R {
    if !is_enabled() {
        return f();
    }
    STACK.with(|s| s.borrow_mut().push(0.0));
    let t0 = Instant::now();
    let r = f();
    let dt = t0.elapsed().as_secs_f64();
    let child = STACK.with(|s| {
        let mut s = s.borrow_mut();
        let child = s.pop().unwrap_or(0.0);
        if let Some(parent) = s.last_mut() {
            *parent += dt;
        }
        child
    });
    if let Some(map) = TOTALS.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        let e = map.entry(name).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += (dt - child).max(0.0);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_scopes_record_self_time() {
        enable();
        let t0 = Instant::now();
        timed("outer", || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            timed("inner", || std::thread::sleep(std::time::Duration::from_millis(30)));
        });
        let total = t0.elapsed().as_secs_f64();
        let rows = take();
        let get = |n: &str| rows.iter().find(|r| r.name == n).unwrap().clone();
        let (outer, inner) = (get("outer"), get("inner"));
        assert_eq!((outer.calls, inner.calls), (1, 1));
        assert!(inner.seconds >= 0.03 && outer.seconds >= 0.02, "{rows:?}");
        // The outer row excludes the inner scope's time.
        assert!(outer.seconds + inner.seconds <= total + 1e-9, "{rows:?} in {total}");
        assert!(!is_enabled());
        assert!(timed("off", || 1) == 1 && take().is_empty());
    }
}
