//! JavaScript workers: Node.js processes running `worker.js`. Node cannot
//! fork (its runtime is threaded), so every worker is a process of its own:
//! the agent starts one before the snapshot, as the warm spare, and later
//! ones on demand.

use super::Stdio;
use super::worker::{Parent, Worker};
use crate::sys;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use zeroboot_proto::Language;

const SCRIPT: &str = include_str!("worker.js");
/// How long Node may take to start and warm up (TCG is slow).
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the agent finds Node.js and the reseed addon.
pub struct Node {
    /// The `node` executable.
    pub path: PathBuf,
    /// The native module that reseeds OpenSSL (`None`: the image has none,
    /// and `crypto` is only as fresh as Node's own fork detection).
    pub addon: Option<PathBuf>,
}

impl Node {
    /// Starts a worker and waits until it is warm.
    pub fn start_worker(&self) -> io::Result<Worker> {
        let (stdin_r, stdin_w) = io::pipe()?;
        let (stdout_r, stdout_w) = io::pipe()?;
        let (stderr_r, stderr_w) = io::pipe()?;
        let (ctl, worker_ctl) = sys::stream_pair()?;
        let mut cmd = Command::new(&self.path);
        cmd.args(["-e", SCRIPT])
            .stdin(stdin_r)
            .stdout(stdout_w)
            .stderr(stderr_w)
            .process_group(0);
        if let Some(addon) = &self.addon {
            cmd.env("ZEROBOOT_RESEED_ADDON", addon);
        }
        sys::pass_as_fd3(&mut cmd, worker_ctl.as_fd());
        let child = cmd.spawn()?;
        drop((cmd, worker_ctl));
        let pid = child.id();
        let stdio = Stdio {
            stdin: Some(File::from(OwnedFd::from(stdin_w))),
            stdout: File::from(OwnedFd::from(stdout_r)),
            stderr: File::from(OwnedFd::from(stderr_r)),
        };
        let mut worker = Worker::new(
            Language::JavaScript,
            pid,
            Parent::Agent(child),
            File::from(ctl),
            stdio,
        )?;
        if let Err(e) = worker.wait_message(START_TIMEOUT) {
            worker.kill();
            let mut said = String::new();
            // The worker is dead: its stderr holds whatever it said (the pipe
            // is non-blocking only once a pump ran, so only read when ended).
            if sys::set_nonblocking(worker.stdio.stderr.as_fd()).is_ok() {
                let _partial = (&worker.stdio.stderr).read_to_string(&mut said);
            }
            return Err(io::Error::other(format!(
                "{} did not start: {e}: {}",
                self.path.display(),
                said.trim()
            )));
        }
        Ok(worker)
    }
}
