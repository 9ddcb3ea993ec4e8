//! The worker's memory budget. Everything that can make the worker's memory
//! grow is charged before it is created — a sandbox for the guest memory it
//! may dirty, every VM (pooled or not) for the kernel memory KVM gives it, a
//! template or snapshot for the pages it holds — and released when the
//! memory is really gone (a VM's charge outlives it until its thread has
//! dropped it). A call that would take the total past the budget fails with
//! [`EngineError::OverBudget`] before the kernel has to choose what to kill.
//!
//! The figures are measured on this project's development host (kvm-pvm,
//! Linux 6.18) in a v1 memory cgroup, by creating VMs and dirtying pages and
//! reading `memory.usage_in_bytes` (docs/memory-budget.md has the runs).

use std::sync::{Arc, Mutex};

use super::EngineError;

/// Bytes per guest page.
const PAGE: u64 = 4096;

/// What things cost, in bytes.
pub(crate) mod cost {
    use super::PAGE;

    /// Kernel and process memory of one VM with one vCPU besides its guest
    /// pages: ~300 KiB at creation and ~400 KiB more once it has run (vCPU
    /// state, shadow page tables for the guest's own page tables, its
    /// thread's stacks), measured at 700-730 KiB per sandbox of the bare
    /// template after one exec; plus the dirty ring's page.
    const VM_FIXED: u64 = 768 << 10;
    /// Kernel memory per byte of guest memory, whether touched or not: the
    /// memory slot's reverse map and large-page tables. Measured 2.5 KiB per
    /// MiB (32 MiB: 310 KiB per VM, 64 GiB: 161 MiB per VM).
    const VM_PER_MIB: u64 = 2560;
    /// One private guest page: the page, its page-table entries (the host's
    /// and KVM's) and reverse-map entry. Measured 4310 bytes per page dirtied.
    const PRIVATE_PAGE: u64 = PAGE + 256;

    /// One VM over `memory` bytes of guest memory.
    pub fn vm(memory: u64) -> u64 {
        VM_FIXED + memory.div_ceil(1 << 20) * VM_PER_MIB
    }

    /// `pages` private guest pages.
    pub fn private(pages: u64) -> u64 {
        pages * PRIVATE_PAGE
    }

    /// `bytes` of a template's sealed memory (shared by every fork).
    pub fn shared(bytes: u64) -> u64 {
        bytes.div_ceil(PAGE) * PAGE
    }
}

/// The budget, shared by the engine and every charge.
pub(crate) struct Budget {
    limit: u64,
    used: Mutex<u64>,
}

/// Bytes charged to the budget until dropped.
#[must_use = "a charge is released when dropped"]
pub(crate) struct Charge {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: Mutex::new(0),
        })
    }

    /// The whole budget.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged now.
    pub fn used(&self) -> u64 {
        *self.lock()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u64> {
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Charges `bytes` for `what`, or says by how much the budget falls short.
    pub fn charge(self: &Arc<Self>, what: &'static str, bytes: u64) -> Result<Charge, EngineError> {
        let mut used = self.lock();
        let available = self.limit.saturating_sub(*used);
        if bytes > available {
            return Err(EngineError::OverBudget {
                what,
                requested: bytes,
                available,
                limit: self.limit,
            });
        }
        *used += bytes;
        Ok(Charge {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// Charges `bytes` only if a reserve of an eighth of the budget stays
    /// free after it: pools take what nothing else wants, so calls find room.
    pub fn charge_spare(self: &Arc<Self>, bytes: u64) -> Option<Charge> {
        let mut used = self.lock();
        if used.saturating_add(bytes).saturating_add(self.limit / 8) > self.limit {
            return None;
        }
        *used += bytes;
        Some(Charge {
            budget: Arc::clone(self),
            bytes,
        })
    }

    /// A charge of nothing, to be grown or to absorb others.
    pub fn nothing(self: &Arc<Self>) -> Charge {
        Charge {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }

    fn release(&self, bytes: u64) {
        *self.lock() -= bytes;
    }
}

impl Charge {
    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `bytes` to the charge if, as for [`Budget::charge_spare`], the
    /// reserve stays free; false (and no change) otherwise.
    pub fn grow_spare(&mut self, bytes: u64) -> bool {
        match self.budget.charge_spare(bytes) {
            Some(mut more) => {
                self.bytes += std::mem::take(&mut more.bytes);
                true
            }
            None => false,
        }
    }

    /// Moves up to `bytes` of this charge into a charge of its own.
    pub fn split(&mut self, bytes: u64) -> Charge {
        let bytes = bytes.min(self.bytes);
        self.bytes -= bytes;
        Charge {
            budget: Arc::clone(&self.budget),
            bytes,
        }
    }

    /// Takes over `other` (of the same budget): one charge for both.
    pub fn absorb(&mut self, mut other: Charge) {
        self.bytes += std::mem::take(&mut other.bytes);
    }

    /// Lowers the charge to `bytes` once the real cost is known (never raises it).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget.release(self.bytes - bytes);
            self.bytes = bytes;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

/// How much of the memory available at start the budget takes by default.
pub const DEFAULT_FRACTION_PERCENT: u64 = 75;

/// The default budget: [`DEFAULT_FRACTION_PERCENT`] of the memory available
/// to this process now: the host's `MemAvailable`, or less when the process's
/// memory cgroup (v2 or v1, and its ancestors) has a lower limit left.
pub fn default_limit() -> u64 {
    available_memory() / 100 * DEFAULT_FRACTION_PERCENT
}

/// Bytes this process can still get: the smaller of the host's available
/// memory and what its memory cgroups leave.
pub fn available_memory() -> u64 {
    let host = meminfo_available().unwrap_or(u64::MAX);
    let cgroup = std::fs::read_to_string("/proc/self/cgroup")
        .ok()
        .and_then(|c| cgroup_room(&c, std::path::Path::new("/sys/fs/cgroup")))
        .unwrap_or(u64::MAX);
    host.min(cgroup)
}

fn meminfo_available() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Room left under the memory limits of the cgroups named in
/// `/proc/self/cgroup` (`proc_cgroup`), with cgroupfs mounted at `root`.
/// v2: the smallest `memory.max - memory.current` from the process's cgroup
/// up to the root; v1: `hierarchical_memory_limit` (which already takes the
/// ancestors into account) minus `memory.usage_in_bytes`. `None`: no limit.
fn cgroup_room(proc_cgroup: &str, root: &std::path::Path) -> Option<u64> {
    let read = |p: std::path::PathBuf| std::fs::read_to_string(p).ok();
    let num = |s: Option<String>| s.and_then(|s| s.trim().parse::<u64>().ok());
    let mut room: Option<u64> = None;
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2: the unified hierarchy, mounted at root or root/unified.
            for base in [root.to_path_buf(), root.join("unified")] {
                let mut dir = base.join(path);
                if !dir.join("memory.max").exists() {
                    continue;
                }
                while dir.starts_with(&base) {
                    let max = num(read(dir.join("memory.max")));
                    let current = num(read(dir.join("memory.current")));
                    if let (Some(max), Some(current)) = (max, current) {
                        let left = max.saturating_sub(current);
                        room = Some(room.map_or(left, |r| r.min(left)));
                    }
                    if !dir.pop() {
                        break;
                    }
                }
                break;
            }
        } else if controllers.split(',').any(|c| c == "memory") {
            let dir = root.join("memory").join(path);
            let limit = read(dir.join("memory.stat")).and_then(|stat| {
                stat.lines()
                    .find_map(|l| l.strip_prefix("hierarchical_memory_limit "))
                    .and_then(|v| v.trim().parse::<u64>().ok())
            });
            let usage = num(read(dir.join("memory.usage_in_bytes")));
            // v1 writes "no limit" as a huge page-rounded number.
            if let (Some(limit), Some(usage)) = (limit, usage)
                && limit < (1 << 62)
            {
                let left = limit.saturating_sub(usage);
                room = Some(room.map_or(left, |r| r.min(left)));
            }
        }
    }
    room
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_add_up_fail_with_the_shortfall_and_release_on_drop() {
        let b = Budget::new(1000);
        let a = b.charge("sandbox", 600).unwrap();
        match b.charge("template", 500) {
            Err(EngineError::OverBudget {
                what: "template",
                requested: 500,
                available: 400,
                limit: 1000,
            }) => {}
            other => panic!("{:?}", other.map(|c| c.bytes())),
        }
        let mut c = b.charge("template", 400).unwrap();
        assert_eq!(b.used(), 1000);
        c.shrink_to(100);
        assert_eq!(b.used(), 700);
        drop(a);
        drop(c);
        assert_eq!(b.used(), 0);
    }

    #[test]
    fn pools_leave_an_eighth_of_the_budget_free() {
        let b = Budget::new(800);
        let held = b.charge("sandbox", 500).unwrap();
        assert!(b.charge_spare(200).is_some_and(|c| c.bytes() == 200));
        assert!(b.charge_spare(201).is_none());
        let mut small = b.charge("template", 10).unwrap();
        assert!(!small.grow_spare(200));
        assert!(small.grow_spare(190));
        assert_eq!((small.bytes(), b.used()), (200, 700));
        drop(small);
        drop(held);
        assert!(b.charge_spare(700).is_some());
    }

    #[test]
    fn a_vm_costs_more_with_more_memory_and_pages_cost_more_than_a_page() {
        assert!(cost::vm(64 << 30) > 160 << 20);
        assert!(cost::vm(32 << 20) < 1 << 20);
        assert!(cost::private(1) > PAGE);
    }

    fn tree(files: &[(&str, &str)]) -> tempdir::Dir {
        let d = tempdir::Dir::new();
        for (path, content) in files {
            let p = d.0.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        d
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let p = std::env::temp_dir().join(format!("zb-budget-{}-{n}", std::process::id()));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn cgroup_v2_room_is_the_tightest_ancestor() {
        let d = tree(&[
            ("a/memory.max", "1000\n"),
            ("a/memory.current", "100\n"),
            ("a/b/memory.max", "max\n"),
            ("a/b/memory.current", "50\n"),
        ]);
        assert_eq!(cgroup_room("0::/a/b\n", &d.0), Some(900));
        let d = tree(&[
            ("unified/a/memory.max", "1000\n"),
            ("unified/a/memory.current", "990\n"),
        ]);
        assert_eq!(cgroup_room("0::/a\n", &d.0), Some(10));
    }

    #[test]
    fn cgroup_v1_room_uses_the_hierarchical_limit() {
        let d = tree(&[
            (
                "memory/x/memory.stat",
                "cache 0\nhierarchical_memory_limit 4096\n",
            ),
            ("memory/x/memory.usage_in_bytes", "1024\n"),
        ]);
        assert_eq!(
            cgroup_room("4:memory:/x\n3:cpuset:/\n0::/\n", &d.0),
            Some(3072)
        );
        let d = tree(&[
            (
                "memory/x/memory.stat",
                "hierarchical_memory_limit 9223372036854771712\n",
            ),
            ("memory/x/memory.usage_in_bytes", "1024\n"),
        ]);
        assert_eq!(cgroup_room("4:memory:/x\n", &d.0), None);
    }
}
