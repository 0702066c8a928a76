//! The process's allocator, for the `unetr` binary and xtask alike.
//!
//! UNETR's activations are 50-100 MB each. glibc maps every allocation above 32 MB afresh and unmaps it
//! on free, so each op would pay for zeroing new pages; mimalloc keeps freed memory without a bound when
//! purging is off (resident memory then ends well above what was ever live) and pays glibc's price when it
//! is on. Large blocks (activations, weights, gradients) are therefore pooled by `unetr_alloc` with a bound
//! at the live peak: the resident memory stays at what a pass or step holds live, and repeated ones reuse
//! pages instead of faulting new ones. Inference pools from 256 KiB; training from 1 MiB: a training run on
//! small crops frees and asks for many sizes of a few hundred KB in turn, which mimalloc serves faster, while
//! at 96^3 the blocks of 1-8 MB (the ViT's weight gradients and activations) left in mimalloc kept its
//! resident memory well above the live peak. mimalloc serves the rest.

#[global_allocator]
pub static GLOBAL: unetr_alloc::Pooled<mimalloc::MiMalloc> = unetr_alloc::Pooled::new(mimalloc::MiMalloc);

/// What a command mostly does, which decides how memory is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Inference,
    Training,
}

/// Sets the allocator up for `profile`. Call first thing in `main`, before any thread starts: the pool's
/// switch only takes effect before the first large allocation (it reports whether it did).
pub fn configure(profile: Profile) -> bool {
    let inference = profile == Profile::Inference;
    let pooling = if inference { unetr_alloc::Pooling::From(unetr_alloc::LARGE) } else { unetr_alloc::Pooling::From(1 << 20) };
    let switched = GLOBAL.set_pooling(pooling);
    // SAFETY: plain option setters of the allocator, called before any worker thread exists.
    unsafe {
        // mimalloc's option numbers (the -sys crate exports no names for these two; same in v2 and v3).
        const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
        const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
        // (MIMALLOC_PURGE_DELAY / MIMALLOC_ARENA_EAGER_COMMIT in the environment take precedence)
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, if inference { 10 } else { -1 });
        }
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            libmimalloc_sys::mi_option_set(MI_OPTION_ARENA_EAGER_COMMIT, if inference { 0 } else { 1 });
        }
    }
    switched
}

/// Library warnings (replaced NaN voxels, skipped keys) go to stderr; RUST_LOG overrides the level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).without_time().try_init();
}
