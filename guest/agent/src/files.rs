//! WriteFile and ReadFile: whole files in one frame each.

use crate::frames::Failure;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use zeroboot_proto::{AgentErrorCode, MAX_PAYLOAD};

fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::new(
        AgentErrorCode::Io,
        format!("{what} {}: {e}", path.display()),
    )
}

/// Writes `data` to `path` (creating missing parent directories) with exactly
/// `mode`'s permission bits.
pub fn write(path: &Path, mode: u32, data: &[u8]) -> Result<(), Failure> {
    if !path.is_absolute() {
        return Err(Failure::new(
            AgentErrorCode::BadRequest,
            "write_file needs an absolute path",
        ));
    }
    let mode = mode & 0o7777;
    let result = (|| {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)?;
        file.write_all(data)?;
        // The umask narrowed the creation mode, and an existing file kept its own.
        file.set_permissions(fs::Permissions::from_mode(mode))
    })();
    result.map_err(|e| io_failure("cannot write", path, e))
}

/// Reads `path` into `out` (one frame's payload); fails with TooLarge if the
/// file holds more than `max_bytes` or more than `out` can carry. Returns the
/// number of bytes read.
pub fn read(path: &Path, max_bytes: u32, out: &mut [u8]) -> Result<usize, Failure> {
    let cap = (max_bytes as usize).min(out.len()).min(MAX_PAYLOAD);
    let mut file = File::open(path).map_err(|e| io_failure("cannot read", path, e))?;
    // Read up to one byte past the cap to tell "exactly full" from "too large";
    // the size from stat is not trusted (/proc files report 0).
    let mut n = 0;
    let mut probe = [0u8; 1];
    loop {
        let chunk = if n < cap {
            &mut out[n..cap]
        } else {
            &mut probe[..]
        };
        match file.read(chunk) {
            Ok(0) => return Ok(n),
            Ok(_) if n >= cap => {
                let msg = format!("{} is larger than the {cap}-byte limit", path.display());
                return Err(Failure::new(AgentErrorCode::TooLarge, msg));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_failure("cannot read", path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("zeroboot-agent-test-{}-{name}", std::process::id()))
    }

    #[test]
    fn write_then_read_round_trips_with_mode_and_parents() {
        let dir = temp("rw");
        let path = dir.join("sub/file.txt");
        write(&path, 0o640, b"hello").unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o7777,
            0o640
        );
        let mut out = [0u8; 16];
        assert_eq!(read(&path, 5, &mut out).unwrap(), 5);
        assert_eq!(&out[..5], b"hello");
        let err = read(&path, 4, &mut out).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::TooLarge);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn relative_and_missing_paths_fail_cleanly() {
        assert_eq!(
            write(Path::new("rel"), 0o600, b"").unwrap_err().code,
            AgentErrorCode::BadRequest
        );
        let err = read(&temp("missing"), 10, &mut [0u8; 4]).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::Io);
    }
}
