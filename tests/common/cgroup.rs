//! A memory cgroup a test creates for a worker: cgroup v2 where the memory
//! controller is on the unified hierarchy, else v1 (this project's machines
//! mount the memory controller as v1). Needs root; without it the test says
//! so and skips, or fails when ZEROBOOT_REQUIRE_CGROUP=1 (CI sets it).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A memory cgroup with a limit, removed on drop (after its processes end).
pub struct MemCgroup {
    dir: PathBuf,
    v2: bool,
}

fn v2_root() -> Option<PathBuf> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(PathBuf::from)
        .find(|root| {
            std::fs::read_to_string(root.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|w| w == "memory"))
        })
}

impl MemCgroup {
    /// Creates `zeroboot-test-NAME-PID` limited to `limit` bytes, or explains
    /// why it cannot (then the caller skips).
    pub fn create(name: &str, limit: u64) -> Option<MemCgroup> {
        if std::env::var_os("ZEROBOOT_LANE").is_some() {
            eprintln!("skipping: the lane's L1 mounts no memory cgroup (the host runs this)");
            return None;
        }
        let leaf = format!("zeroboot-test-{name}-{}", std::process::id());
        let made = match v2_root() {
            Some(root) => {
                // Children of root get the controller only when it is on.
                let _ = std::fs::write(root.join("cgroup.subtree_control"), "+memory");
                let dir = root.join(&leaf);
                std::fs::create_dir(&dir)
                    .and_then(|()| std::fs::write(dir.join("memory.max"), limit.to_string()))
                    .and_then(|()| std::fs::write(dir.join("memory.swap.max"), "0").or(Ok(())))
                    .map(|()| MemCgroup { dir, v2: true })
            }
            None => {
                let dir = Path::new("/sys/fs/cgroup/memory").join(&leaf);
                std::fs::create_dir(&dir)
                    .and_then(|()| {
                        std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string())
                    })
                    .map(|()| MemCgroup { dir, v2: false })
            }
        };
        match made {
            Ok(cg) => Some(cg),
            Err(e) => {
                if std::env::var("ZEROBOOT_REQUIRE_CGROUP").as_deref() == Ok("1") {
                    panic!("cannot create a memory cgroup ({e}) and ZEROBOOT_REQUIRE_CGROUP=1");
                }
                eprintln!("skipping: cannot create a memory cgroup: {e}");
                None
            }
        }
    }

    /// `program ARGS` run inside this cgroup (a shell moves itself in, then
    /// execs the program).
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("echo $$ > \"$0/cgroup.procs\" && exec \"$@\"")
            .arg(&self.dir)
            .arg(program)
            .args(args);
        cmd
    }

    fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.dir.join(file)).unwrap_or_default()
    }

    fn field(&self, file: &str, key: &str) -> u64 {
        self.read(file)
            .lines()
            .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Bytes charged to the cgroup now (kernel memory included).
    pub fn usage(&self) -> u64 {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        self.read(file).trim().parse().unwrap_or(0)
    }

    /// Processes the kernel's OOM killer has killed in the cgroup.
    pub fn oom_kills(&self) -> u64 {
        if self.v2 {
            self.field("memory.events", "oom_kill ")
        } else {
            self.field("memory.oom_control", "oom_kill ")
        }
    }

    /// Waits until usage is at most `bytes`; returns the last reading.
    pub fn wait_usage_at_most(&self, bytes: u64, within: Duration) -> u64 {
        let deadline = Instant::now() + within;
        loop {
            let u = self.usage();
            if u <= bytes || Instant::now() > deadline {
                return u;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for MemCgroup {
    fn drop(&mut self) {
        // The worker may still be exiting: its cgroup goes once it has.
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
