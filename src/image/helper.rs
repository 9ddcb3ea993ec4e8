//! The build helper: a child process that builds spec images for a worker
//! that cannot. Under its seccomp filter the worker may start no program
//! (no `execve`, no new process), yet a spec image takes apt, uv and the
//! agent's build. So `zeroboot serve` starts this helper — the same binary,
//! `zeroboot build-helper` — before it confines itself, and hands every
//! image build to it: one JSON request line on the helper's stdin, progress
//! lines and one outcome line back on its stdout ([`Reply`]). The helper
//! runs unconfined with the worker's user and sees only specs the worker
//! passes on, which were parsed and checked like any other spec; it ends
//! when the worker does (end of its stdin).

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

use super::ImageError;
use super::progress::{Progress, Reporter};
use super::spec_image::{Manifest, SpecBuildOptions, SpecImage};
use crate::spec::Spec;

/// The hidden subcommand that runs the helper.
pub const SUBCOMMAND: &str = "build-helper";

/// Longest line the helper may send: a manifest lists every package.
const MAX_LINE: u64 = 16 << 20;

/// One build request.
#[derive(Serialize, Deserialize)]
pub struct Request {
    /// What to build.
    pub spec: Spec,
    /// Cache directory (default: the helper's default).
    pub cache_dir: Option<PathBuf>,
    /// A prebuilt agent.
    pub agent: Option<PathBuf>,
}

/// One line from the helper.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// A progress report.
    Progress(Progress),
    /// The image.
    Image {
        /// Debian's kernel.
        kernel: PathBuf,
        /// The initramfs.
        initramfs: PathBuf,
        /// What is in it.
        manifest: Manifest,
        /// Found in the cache.
        cached: bool,
    },
    /// The build failed: its message and its error's `data` as the worker
    /// reports it.
    Failed {
        /// The error with its causes.
        message: String,
        /// The typed data of the JSON-RPC error.
        data: serde_json::Value,
    },
}

struct Pipes {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

/// The running helper.
pub struct BuildHelper(Mutex<Option<Pipes>>);

static HELPER: OnceLock<BuildHelper> = OnceLock::new();

/// Starts the helper (`exe build-helper`, `exe` being zeroboot) for this
/// process; later spec builds go through it.
pub fn start(exe: &std::path::Path) -> std::io::Result<()> {
    let mut child = Command::new(exe)
        .arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
        return Err(std::io::Error::other("the helper's pipes are missing"));
    };
    let helper = BuildHelper(Mutex::new(Some(Pipes {
        child,
        to,
        from: BufReader::new(from),
    })));
    HELPER
        .set(helper)
        .map_err(|_| std::io::Error::other("a build helper is running already"))
}

/// The helper, when this process started one.
pub fn running() -> Option<&'static BuildHelper> {
    HELPER.get()
}

impl BuildHelper {
    /// Builds `spec` in the helper, one build at a time.
    pub fn build(
        &self,
        spec: &Spec,
        opts: &SpecBuildOptions,
        progress: Reporter<'_>,
    ) -> Result<SpecImage, ImageError> {
        let mut pipes = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pipes.as_mut() else {
            return Err(gone("it ended after an earlier failure"));
        };
        match exchange(p, spec, opts, progress) {
            Ok(outcome) => outcome,
            Err(Broken(why)) => {
                // Whatever the helper was doing, it is of no use now.
                let _ = p.child.kill();
                let _ = p.child.wait();
                *pipes = None;
                Err(gone(&why))
            }
        }
    }
}

/// The helper can no longer be talked to.
struct Broken(String);

fn gone(why: &str) -> ImageError {
    ImageError::Helper {
        message: format!("the build helper is gone: {why}"),
        data: serde_json::json!({"kind": "build_environment", "detail": why}),
    }
}

fn exchange(
    p: &mut Pipes,
    spec: &Spec,
    opts: &SpecBuildOptions,
    progress: Reporter<'_>,
) -> Result<Result<SpecImage, ImageError>, Broken> {
    let request = Request {
        spec: spec.clone(),
        cache_dir: opts.cache_dir.clone(),
        agent: opts.agent.clone(),
    };
    let mut line = serde_json::to_vec(&request).map_err(|e| Broken(e.to_string()))?;
    line.push(b'\n');
    p.to.write_all(&line)
        .and_then(|()| p.to.flush())
        .map_err(|e| Broken(format!("cannot send the request: {e}")))?;
    loop {
        let mut buf = Vec::new();
        let n = (&mut p.from)
            .take(MAX_LINE)
            .read_until(b'\n', &mut buf)
            .map_err(|e| Broken(format!("cannot read its reply: {e}")))?;
        if n == 0 {
            return Err(Broken("it exited during the build".into()));
        }
        let reply: Reply = serde_json::from_slice(&buf)
            .map_err(|e| Broken(format!("it sent a line that is not a reply: {e}")))?;
        match reply {
            Reply::Progress(p) => progress(&p),
            Reply::Image {
                kernel,
                initramfs,
                manifest,
                cached,
            } => {
                return Ok(Ok(SpecImage {
                    kernel,
                    initramfs,
                    manifest,
                    cached,
                }));
            }
            Reply::Failed { message, data } => {
                return Ok(Err(ImageError::Helper { message, data }));
            }
        }
    }
}
