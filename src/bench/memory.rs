//! Memory measurement: the process's resident set (Linux `/proc/self/status`) and the bytes
//! requested through Rust's allocator (a counting global allocator).
//!
//! Both agree within ~2% here (see `../shared/STACK-NOTES.md`). RSS is what the operating
//! system charges the process, including the binary and allocator slack; the allocator peak is
//! what the model's tensors asked for during one measured step, free of everything else.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// A global allocator that counts live bytes and their peak. The binary installs it with
/// `#[global_allocator]`; until then [`CountingAlloc::is_installed`] is false and the peaks
/// read 0.
pub struct CountingAlloc;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

// SAFETY: every call is forwarded to the system allocator with the caller's arguments
// unchanged; the counting only reads the layouts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's `GlobalAlloc::alloc` contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded under the caller's `GlobalAlloc::alloc_zeroed` contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            add(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded under the caller's `GlobalAlloc::realloc` contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                add(new_size - layout.size());
            } else {
                CURRENT.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[inline]
fn add(bytes: usize) {
    INSTALLED.store(true, Ordering::Relaxed);
    let now = CURRENT.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

impl CountingAlloc {
    /// Whether allocations are being counted (the allocator is installed and has been used).
    pub fn is_installed() -> bool {
        INSTALLED.load(Ordering::Relaxed)
    }

    /// Bytes currently allocated.
    pub fn current() -> usize {
        CURRENT.load(Ordering::Relaxed)
    }

    /// Highest number of bytes allocated at once since the last [`Self::reset_peak`].
    pub fn peak() -> usize {
        PEAK.load(Ordering::Relaxed)
    }

    /// Starts a new peak window at the current allocation level.
    pub fn reset_peak() {
        PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// Resident-set figures of this process, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rss {
    /// `VmRSS`: resident now.
    pub current: u64,
    /// `VmHWM`: the high-water mark since start or the last [`reset_rss_peak`].
    pub peak: u64,
}

/// Reads `/proc/self/status`; `None` where it does not exist (not Linux).
pub fn rss() -> Option<Rss> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some(Rss {
        current: field("VmRSS:")?,
        peak: field("VmHWM:")?,
    })
}

/// Resets the RSS high-water mark to the current RSS (writes `5` to `/proc/self/clear_refs`).
/// Returns false where the kernel does not allow it; the peak then covers the whole process.
pub fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Memory the machine can still hand out (`MemAvailable`), in bytes.
pub fn available_memory() -> Option<u64> {
    meminfo_field("MemAvailable:")
}

/// Total physical memory (`MemTotal`), in bytes.
pub fn total_memory() -> Option<u64> {
    meminfo_field("MemTotal:")
}

fn meminfo_field(name: &str) -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes to MB as the Hugging Face benchmark reported them (2^20 bytes).
pub fn to_mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_and_peak_is_at_least_current() {
        let r = rss().expect("linux /proc");
        assert!(r.current > 0 && r.peak >= r.current);
        assert!(total_memory().unwrap() >= available_memory().unwrap());
    }

    #[test]
    fn rss_peak_sees_a_large_allocation() {
        reset_rss_peak();
        let before = rss().unwrap();
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        drop(big);
        let after = rss().unwrap();
        assert!(
            after.peak >= before.current + (60 << 20),
            "{before:?} -> {after:?}"
        );
    }
}
