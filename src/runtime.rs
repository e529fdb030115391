//! Process-wide settings for compute, in one place for the binary, the tests and library
//! users alike: the allocator's tuning and candle's idle workers ([`init`]), the size of the
//! compute pool ([`use_threads`]). The CPU kernels' tier is chosen in compute
//! ([`crate::compute::isa::use_isa`]), which calls [`init`] first.
//!
//! What the allocator and worker settings bought: docs/performance.md, "Measurements behind the code".

use std::sync::OnceLock;

use anyhow::Result;

/// Applies the allocator and worker settings, once per process (later calls do nothing).
/// Call it first thing, before any thread starts: `main` does, and so does [`use_threads`].
pub fn init() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        keep_freed_memory();
        quiet_idle_workers();
    });
}

/// Sizes the compute pool, once per process, and returns the thread count: rayon's global pool
/// (every product, the attention and the element-wise passes) and candle's own CPU pool
/// (which reads `RAYON_NUM_THREADS` when it first starts) get `threads` threads. Asking again
/// for the same count is fine; asking for another is an error, because a pool cannot be
/// resized once it runs (setting the variable later, as commands once did, was silently
/// ignored).
pub fn use_threads(threads: usize) -> Result<usize> {
    static THREADS: OnceLock<usize> = OnceLock::new();
    init();
    let threads = threads.max(1);
    let set = *THREADS.get_or_init(|| {
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        // Fails only if the pool already exists (something computed before this call); then
        // the count it has is the one in force, and the check below says so.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global();
        rayon::current_num_threads()
    });
    if set != threads {
        anyhow::bail!(
            "this process already computes with {set} threads; {threads} cannot be set now \
             (the thread count is fixed before the first computation)"
        );
    }
    Ok(set)
}

/// Makes glibc's allocator keep freed memory for reuse instead of handing it back to the
/// kernel: a training step allocates and frees hundreds of megabytes of activations and
/// gradients, and with the default settings every step paid for fresh zeroed pages again
/// (page faults, plus TLB shoot-downs across threads when blocks were unmapped), about a sixth
/// of the step. Blocks up to 32 MiB (glibc's maximum) come from the heap, and the heap is not
/// trimmed. Peak resident memory is unchanged in kind: it is the most the process held.
///
/// All threads share the one main arena: a training step runs on a pool thread
/// ([`on_compute_pool`]), and a thread's own arena is made of 64 MiB heaps in which blocks of
/// tens of MiB (BERT-base's activations and gradients) fragment badly: measured at BERT-base
/// 8x128, the process's peak grew from 3.8 to 6.2 GB over a few steps with per-thread arenas.
/// The compute threads allocate little themselves, so the shared arena's lock is not contended.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// candle runs element-wise ops on its own worker threads, which spin for a while after each
/// op before sleeping; on a machine with as many threads as cores they spin on the cores the
/// GEMM (on rayon's threads) needs next. A short spin keeps the latency benefit for chains of
/// small ops. A value the user set is kept.
fn quiet_idle_workers() {
    const VAR: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(VAR).is_none() {
        std::env::set_var(VAR, "200");
    }
}

/// Hands memory the allocator holds but no longer uses back to the kernel, wherever it lies in
/// the heap. Called while a model is prepared for inference, after each block: packing frees
/// each loaded weight after its packed copy is made, and the heap (never trimmed, see above)
/// would otherwise keep the freed pages resident beside the packed ones.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages to the kernel; it is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Runs `f` as one task on the compute pool (rayon's, which `--threads` sizes) and waits for
/// it. Every product inside then forks from a pool thread, and the other threads, still
/// spinning from the previous product, pick up their share at once; called from outside the
/// pool, each product would instead be handed to workers that had gone to sleep while this
/// thread waited (what that bought: docs/performance.md, "Measurements behind the code"). Inside the pool already, `f` just runs.
pub fn on_compute_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pool is sized once: the same count again is fine, another is refused with a reason
    /// instead of being silently ignored.
    #[test]
    fn the_thread_count_is_fixed_once() {
        let n = rayon::current_num_threads();
        assert_eq!(use_threads(n).unwrap(), n);
        assert_eq!(use_threads(n).unwrap(), n);
        let e = use_threads(n + 1).unwrap_err().to_string();
        assert!(
            e.contains(&format!("already computes with {n} threads")),
            "{e}"
        );
    }
}
