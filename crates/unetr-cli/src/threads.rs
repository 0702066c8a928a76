//! Threads of the process, for the `unetr` binary and xtask alike.
//!
//! Our kernels run on rayon's pool. candle runs its own element-wise ops (the gradient sums of its
//! autograd, the loss's arithmetic) on a second pool of its own, whose workers spin for a while after each
//! op before they sleep: on a machine with few cores they take cores from rayon's threads in the op that
//! follows. With that pool at one thread (the calling one, no workers) a training step is faster
//! (docs/benchmarks.md); candle's ops left on it are small next to ours.

/// Sets candle's pool to the calling thread alone unless `CANDLE_NUM_THREADS` says otherwise. Call first
/// thing in `main`, before any thread starts and before the first candle op (the pool reads the variable
/// once, when first used).
pub fn configure() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}
