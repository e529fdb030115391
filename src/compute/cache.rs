//! The CPU's data cache sizes, read from the machine it runs on: the products size their
//! blocks from them, and the environment file records them beside every speed claim.
//!
//! Machines of one cloud type differ (one 2-vCPU VM had 1 MiB of L2 per core, another of the
//! same kind 512 KiB), so no size is taken from the machine the code was tuned on. Linux
//! reports the caches in sysfs; where it cannot be read, the sizes assumed are those of the
//! smaller common x86 server cores and say so ([`CacheSizes::detected`] is false).
//!
//! An L2 is not always one core's: the two hardware threads of an SMT core share it (most
//! Intel cloud VMs: 2 vCPUs are one core's two threads), and so do the four cores of an Intel
//! E-core cluster. sysfs lists who shares it, and the products size their blocks from the
//! share each compute thread has ([`CacheSizes::l2_per_thread`]).

use std::fmt;
use std::path::Path;
use std::sync::OnceLock;

/// Data cache sizes seen by one core, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache.
    pub l1d: usize,
    /// Level-2 cache (unified).
    pub l2: usize,
    /// Logical CPUs sharing that L2 (its hardware threads, or a cluster's cores); 1 where it
    /// cannot be read.
    pub l2_shared_by: usize,
    /// Level-3 cache (shared), when there is one.
    pub l3: Option<usize>,
    /// Whether the sizes were read from the machine (else assumed).
    pub detected: bool,
}

impl CacheSizes {
    /// What is assumed where nothing can be read: 32 KiB L1d and 512 KiB L2 (AMD Zen 2/3,
    /// Intel client cores have 1.25-2 MiB; taking the smaller errs towards blocks that fit).
    /// Erring small is cheap: on a 1 MiB machine the blocks this size gives ran within the
    /// run-to-run spread of its own (docs/performance.md, "Blocks sized for a 512 KiB L2").
    pub const ASSUMED: Self = Self {
        l1d: 32 << 10,
        l2: 512 << 10,
        l2_shared_by: 1,
        l3: None,
        detected: false,
    };

    /// The L2 each of `threads` compute threads has: all of it, divided among the threads that
    /// may share it (at most `l2_shared_by`, at most `threads`). Two threads on one SMT core's
    /// hardware threads each get half: sizing each thread's blocks for the whole L2 would make
    /// the two fill it twice over. Erring small is cheap where they do not share it after all
    /// (docs/performance.md, "Blocks sized for a 512 KiB L2").
    pub fn l2_per_thread(&self, threads: usize) -> usize {
        self.l2 / self.l2_shared_by.min(threads).max(1)
    }

    /// This machine's sizes, read once (the first CPU's view).
    pub fn detect() -> Self {
        static SIZES: OnceLock<CacheSizes> = OnceLock::new();
        *SIZES.get_or_init(|| {
            Self::from_sysfs(Path::new("/sys/devices/system/cpu/cpu0/cache"))
                .unwrap_or(Self::ASSUMED)
        })
    }

    /// Reads `index*/{level,type,size,shared_cpu_list}` under a sysfs cache directory; `None`
    /// unless both an L1 data and an L2 cache are listed.
    pub fn from_sysfs(dir: &Path) -> Option<Self> {
        let (mut l1d, mut l2, mut l3) = (None, None, None);
        let mut l2_shared_by = 1;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            if !entry.file_name().to_string_lossy().starts_with("index") {
                continue;
            }
            let read = |name: &str| {
                std::fs::read_to_string(entry.path().join(name))
                    .ok()
                    .map(|s| s.trim().to_string())
            };
            let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size"))
            else {
                continue;
            };
            let Some(size) = parse_size(&size) else {
                continue;
            };
            match (level.as_str(), kind.as_str()) {
                ("1", "Data" | "Unified") => l1d = Some(size),
                ("2", "Data" | "Unified") => {
                    l2 = Some(size);
                    l2_shared_by = read("shared_cpu_list")
                        .and_then(|list| count_cpu_list(&list))
                        .unwrap_or(1);
                }
                ("3", "Data" | "Unified") => l3 = Some(size),
                _ => {}
            }
        }
        Some(Self {
            l1d: l1d?,
            l2: l2?,
            l2_shared_by,
            l3,
            detected: true,
        })
    }
}

/// How many CPUs a sysfs CPU list names (`0`, `0-1`, `0,64`, `0-3,8-11`); `None` if it is
/// not one or names none.
fn count_cpu_list(list: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in list.trim().split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim().parse::<usize>().ok()?, hi.trim().parse().ok()?),
            None => {
                let cpu = part.trim().parse::<usize>().ok()?;
                (cpu, cpu)
            }
        };
        n += hi.checked_sub(lo)? + 1;
    }
    (n > 0).then_some(n)
}

/// Parses sysfs's sizes: `48K`, `1024K`, `32768K`, `2M`, or plain bytes.
fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: usize = digits.parse().ok()?;
    let scale = match unit.trim() {
        "" => 1,
        "K" | "KB" | "KiB" => 1 << 10,
        "M" | "MB" | "MiB" => 1 << 20,
        "G" | "GB" | "GiB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(scale)
}

impl fmt::Display for CacheSizes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kib = |b: usize| b >> 10;
        write!(f, "L1d {} KiB, L2 {} KiB", kib(self.l1d), kib(self.l2))?;
        if self.l2_shared_by > 1 {
            write!(f, " (shared by {} logical CPUs)", self.l2_shared_by)?;
        }
        if let Some(l3) = self.l3 {
            write!(f, ", L3 {} KiB", kib(l3))?;
        }
        if !self.detected {
            write!(f, " (assumed: not readable on this system)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_in_sysfs_units() {
        assert_eq!(parse_size("48K"), Some(48 << 10));
        assert_eq!(parse_size("32768K"), Some(32 << 20));
        assert_eq!(parse_size("2M"), Some(2 << 20));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("12Q"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn cpu_lists_are_counted() {
        assert_eq!(count_cpu_list("0\n"), Some(1));
        assert_eq!(count_cpu_list("0-1"), Some(2));
        assert_eq!(count_cpu_list("0,64"), Some(2));
        assert_eq!(count_cpu_list("0-3,8-11"), Some(8));
        for bad in ["", "x", "3-1", "0-", "0,,1"] {
            assert_eq!(count_cpu_list(bad), None, "{bad:?}");
        }
    }

    /// A sysfs cache listing as the kernel writes it (one CPU's `cache/` directory), in a
    /// fresh temporary directory.
    fn sysfs(name: &str, entries: &[(&str, &str, &str, Option<&str>)]) -> Option<CacheSizes> {
        let tmp =
            std::env::temp_dir().join(format!("bertbench-cache-{name}-{}", std::process::id()));
        for (i, (level, kind, size, shared)) in entries.iter().enumerate() {
            let d = tmp.join(format!("index{i}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("level"), format!("{level}\n")).unwrap();
            std::fs::write(d.join("type"), format!("{kind}\n")).unwrap();
            std::fs::write(d.join("size"), format!("{size}\n")).unwrap();
            if let Some(shared) = shared {
                std::fs::write(d.join("shared_cpu_list"), format!("{shared}\n")).unwrap();
            }
        }
        let c = CacheSizes::from_sysfs(&tmp);
        std::fs::remove_dir_all(&tmp).unwrap();
        c
    }

    /// A Zen 3's listing (one core per vCPU), instruction cache included; and one without the
    /// sharing lists, as older kernels write it.
    #[test]
    #[cfg_attr(miri, ignore = "Miri isolates the file system")]
    fn sysfs_listing_of_a_zen3() {
        let zen3 = |shared: [Option<&'static str>; 4]| {
            [
                ("1", "Data", "32K", shared[0]),
                ("1", "Instruction", "32K", shared[1]),
                ("2", "Unified", "512K", shared[2]),
                ("3", "Unified", "32768K", shared[3]),
            ]
        };
        let want = CacheSizes {
            l1d: 32 << 10,
            l2: 512 << 10,
            l2_shared_by: 1,
            l3: Some(32 << 20),
            detected: true,
        };
        let c = sysfs(
            "zen3",
            &zen3([Some("0"), Some("0"), Some("0"), Some("0-1")]),
        )
        .unwrap();
        assert_eq!(c, want);
        assert_eq!(c.to_string(), "L1d 32 KiB, L2 512 KiB, L3 32768 KiB");
        assert_eq!(c.l2_per_thread(2), 512 << 10);
        assert_eq!(sysfs("old", &zen3([None; 4])), Some(want));
        assert!(CacheSizes::from_sysfs(Path::new("/nonexistent")).is_none());
    }

    /// A 2-vCPU Intel cloud VM (one core's two hardware threads, L1d and L2 shared by both):
    /// two compute threads get half the L2 each, one thread all of it.
    #[test]
    #[cfg_attr(miri, ignore = "Miri isolates the file system")]
    fn sysfs_listing_of_an_smt_core() {
        let c = sysfs(
            "smt",
            &[
                ("1", "Data", "48K", Some("0-1")),
                ("1", "Instruction", "32K", Some("0-1")),
                ("2", "Unified", "1280K", Some("0-1")),
                ("3", "Unified", "55296K", Some("0-1")),
            ],
        )
        .unwrap();
        assert_eq!((c.l2, c.l2_shared_by), (1280 << 10, 2));
        assert_eq!(c.l2_per_thread(1), 1280 << 10);
        assert_eq!(c.l2_per_thread(2), 640 << 10);
        assert_eq!(c.l2_per_thread(8), 640 << 10);
        assert_eq!(
            c.to_string(),
            "L1d 48 KiB, L2 1280 KiB (shared by 2 logical CPUs), L3 55296 KiB"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "Miri isolates the file system")]
    fn this_machine_reports_plausible_sizes() {
        let c = CacheSizes::detect();
        assert!(c.l1d >= 8 << 10 && c.l2 > c.l1d, "{c}");
    }
}
