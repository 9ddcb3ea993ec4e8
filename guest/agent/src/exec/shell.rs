//! Shell code. Without a context, `sh -c CODE` (an argv run: a shell starts
//! in about a millisecond, nothing to keep warm). A shell context is one
//! long-lived shell that sources each cell from a file, so variables, the
//! working directory and functions persist; `exit` in a cell ends it.
//!
//! The context's channel is fd 3, as for the other workers, but line based
//! one way: the agent sends the path of a file holding the cell and a
//! newline; the shell answers with the workers' binary `D` message (length 6,
//! `D`, the cell's status as an i32, no parts), written with `printf`.

use super::Stdio;
use super::worker::{Parent, Worker};
use crate::sys;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use zeroboot_proto::Language;

/// The context's loop: source each cell with stdin closed, report its status.
const LOOP: &str = r#"while IFS= read -r zb_cell <&3; do . "$zb_cell" </dev/null; zb_status=$?; rm -f -- "$zb_cell"; printf "\006\000\000\000D\\$(printf %03o "$zb_status")\000\000\000\000" >&3; done"#;

/// Finds the image's shell: bash if it has one, else sh.
pub fn find() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    ["bash", "sh"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Quotes `s` for the shell: inside single quotes, each `'` as `'\''`.
fn quote(s: &[u8]) -> Vec<u8> {
    let mut out = vec![b'\''];
    for &b in s {
        if b == b'\'' {
            out.extend(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

/// The file a cell is sourced from: the environment and directory it asks
/// for, a fresh `$RANDOM` seed when reseeding, then the code.
fn cell_script(code: &[u8], env: &[(&[u8], &[u8])], cwd: &[u8], random: Option<u16>) -> Vec<u8> {
    let mut s = Vec::new();
    for (k, v) in env {
        s.extend(b"export ");
        s.extend(*k);
        s.push(b'=');
        s.extend(quote(v));
        s.push(b'\n');
    }
    if !cwd.is_empty() {
        s.extend(b"cd -- ");
        s.extend(quote(cwd));
        s.push(b'\n');
    }
    if let Some(seed) = random {
        s.extend(format!("RANDOM={seed}\n").as_bytes());
    }
    s.extend(code);
    s.push(b'\n');
    s
}

/// Starts a shell context.
pub fn start_context(shell: &Path, user: Option<(u32, u32)>) -> io::Result<Worker> {
    let (stdout_r, stdout_w) = io::pipe()?;
    let (stderr_r, stderr_w) = io::pipe()?;
    let (ctl, worker_ctl) = sys::stream_pair()?;
    let mut cmd = Command::new(shell);
    cmd.args(["-c", LOOP])
        .stdin(std::process::Stdio::null())
        .stdout(stdout_w)
        .stderr(stderr_w)
        .process_group(0);
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    sys::pass_as_fd3(&mut cmd, worker_ctl.as_fd());
    let child = cmd.spawn()?;
    drop((cmd, worker_ctl));
    let pid = child.id();
    let stdio = Stdio {
        stdin: None,
        stdout: File::from(OwnedFd::from(stdout_r)),
        stderr: File::from(OwnedFd::from(stderr_r)),
    };
    Worker::new(
        Language::Bash,
        pid,
        Parent::Agent(child),
        File::from(ctl),
        stdio,
    )
}

/// Writes a cell's file and returns the request that makes the context run it.
pub fn cell_request(
    code: &[u8],
    env: &[(&[u8], &[u8])],
    cwd: &[u8],
    random: Option<u16>,
) -> io::Result<Vec<u8>> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join("zeroboot-cells");
    std::fs::create_dir_all(&dir)?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let path = dir.join(format!("{}-{n}.sh", std::process::id()));
    std::fs::write(&path, cell_script(code, env, cwd, random))?;
    let mut line = OsStr::as_bytes(path.as_os_str()).to_vec();
    if line.contains(&b'\n') {
        return Err(io::Error::other("temporary directory path holds a newline"));
    }
    line.push(b'\n');
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(quote(b"it's"), b"'it'\\''s'");
        assert_eq!(quote(b""), b"''");
    }

    #[test]
    fn cell_script_sets_env_and_directory_before_the_code() {
        let script = cell_script(b"echo $A", &[(b"A", b"x y")], b"/tmp", Some(7));
        assert_eq!(script, b"export A='x y'\ncd -- '/tmp'\nRANDOM=7\necho $A\n");
    }
}
