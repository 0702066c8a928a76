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

/// Memory phases: while a probe is installed ([`start_memory_phases`]), each [`memory_phase`] call ends the
/// current phase, recording the most bytes held during it, and starts the next. The training step names
/// its segments' forwards and backwards this way, so a bench can say which one holds the step's peak. The
/// probe is the allocator's (this crate does not own one): its peak since the last reset, and the reset.
struct Phases {
    peak: fn() -> usize,
    reset_peak: fn(),
    current: Option<&'static str>,
    done: Vec<(&'static str, usize)>,
}

static PHASES_ON: AtomicBool = AtomicBool::new(false);
static PHASES: Mutex<Option<Phases>> = Mutex::new(None);

/// The most bytes held during one phase.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MemoryPhase {
    pub name: String,
    pub peak_bytes: usize,
}

/// Starts recording memory phases with the allocator's `peak` (the most bytes held since the last
/// `reset_peak`) and `reset_peak`. Resets the allocator's peak at each phase.
pub fn start_memory_phases(peak: fn() -> usize, reset_peak: fn()) {
    reset_peak();
    *PHASES.lock().unwrap_or_else(|e| e.into_inner()) = Some(Phases { peak, reset_peak, current: None, done: Vec::new() });
    PHASES_ON.store(true, Ordering::Relaxed);
}

/// Ends the current phase and starts `name` (nothing while no probe is installed).
pub fn memory_phase(name: &'static str) {
    if !PHASES_ON.load(Ordering::Relaxed) {
        return;
    }
    if let Some(p) = PHASES.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        if let Some(cur) = p.current.take() {
            p.done.push((cur, (p.peak)()));
        }
        (p.reset_peak)();
        p.current = Some(name);
    }
}

/// Ends the current phase, removes the probe and returns the phases in order (a name met twice is
/// listed twice).
pub fn take_memory_phases() -> Vec<MemoryPhase> {
    PHASES_ON.store(false, Ordering::Relaxed);
    let Some(mut p) = PHASES.lock().unwrap_or_else(|e| e.into_inner()).take() else { return Vec::new() };
    if let Some(cur) = p.current.take() {
        p.done.push((cur, (p.peak)()));
    }
    p.done.into_iter().map(|(name, peak_bytes)| MemoryPhase { name: name.to_string(), peak_bytes }).collect()
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

    #[test]
    fn memory_phases_record_each_phase_peak() {
        use std::sync::atomic::AtomicUsize;
        static LIVE: AtomicUsize = AtomicUsize::new(0);
        static PEAK: AtomicUsize = AtomicUsize::new(0);
        let hold = |n: usize| {
            LIVE.store(n, Ordering::Relaxed);
            PEAK.fetch_max(n, Ordering::Relaxed);
        };
        memory_phase("before any probe");
        assert!(take_memory_phases().is_empty());
        start_memory_phases(|| PEAK.load(Ordering::Relaxed), || PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed));
        memory_phase("a");
        hold(30);
        hold(10);
        memory_phase("b");
        hold(20);
        let phases = take_memory_phases();
        let got: Vec<(&str, usize)> = phases.iter().map(|p| (p.name.as_str(), p.peak_bytes)).collect();
        assert_eq!(got, [("a", 30), ("b", 20)]);
        memory_phase("after");
        assert!(take_memory_phases().is_empty());
    }
}
