//! WriteFile and ReadFile, a chunk per frame. A write goes to a temporary
//! file beside its target and is renamed over it when the last chunk arrives
//! (permission bits applied first), so a failed or abandoned transfer never
//! leaves a partial file under the target's name. A read keeps its file open
//! between chunks, so a file replaced meanwhile is never mixed with its
//! successor. Any request but the next chunk of the transfer in progress
//! abandons it.

use crate::frames::Failure;
use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use zeroboot_proto::{AgentErrorCode, FILE_CONTINUE, FILE_MORE, MAX_PAYLOAD, ReadFile, WriteFile};

fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure::new(
        AgentErrorCode::Io,
        format!("{what} {}: {e}", path.display()),
    )
}

fn too_large(path: &Path, max_bytes: u32) -> Failure {
    Failure::new(
        AgentErrorCode::TooLarge,
        format!(
            "{} is larger than the {max_bytes}-byte limit",
            path.display()
        ),
    )
}

fn bad_request(message: &str) -> Failure {
    Failure::new(AgentErrorCode::BadRequest, message)
}

fn path_of(bytes: &[u8]) -> Result<PathBuf, Failure> {
    let path = PathBuf::from(std::ffi::OsStr::from_bytes(bytes));
    if !path.is_absolute() || path.file_name().is_none() {
        return Err(bad_request("a file path must be absolute and name a file"));
    }
    Ok(path)
}

/// A write in progress; dropping it unfinished removes its temporary file.
struct Upload {
    target: PathBuf,
    temp: PathBuf,
    file: File,
    written: u64,
    committed: bool,
}

impl Upload {
    /// Creates a fresh temporary file (never an existing one, never through
    /// a symlink) in the target's directory, creating missing parents.
    fn create(target: PathBuf) -> Result<Upload, Failure> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let parent = target.parent().unwrap_or(Path::new("/"));
        fs::create_dir_all(parent).map_err(|e| io_failure("cannot create", parent, e))?;
        loop {
            let mut name = OsString::from(".");
            name.push(target.file_name().unwrap_or_default());
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            name.push(format!(".{}-{n}.zbpart", std::process::id()));
            let temp = parent.join(name);
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&temp)
            {
                Ok(file) => {
                    return Ok(Upload {
                        target,
                        temp,
                        file,
                        written: 0,
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(io_failure("cannot write", &target, e)),
            }
        }
    }

    /// Gives the file exactly `mode`'s permission bits (the umask does not
    /// apply) and moves it over the target.
    fn commit(mut self, mode: u32) -> Result<(), Failure> {
        let done = self
            .file
            .set_permissions(fs::Permissions::from_mode(mode & 0o7777))
            .and_then(|()| fs::rename(&self.temp, &self.target));
        self.committed = done.is_ok();
        done.map_err(|e| io_failure("cannot write", &self.target, e))
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the directory may be gone or read-only by now.
            let _ = fs::remove_file(&self.temp);
        }
    }
}

/// A read in progress: the open file and how far the host has read.
struct Download {
    path: PathBuf,
    file: File,
    offset: u64,
}

impl Download {
    /// Opens `path`; a regular file already larger than `max_bytes` fails at
    /// once (other files, /proc's among them, are counted as they are read).
    fn open(path: PathBuf, max_bytes: u32) -> Result<Download, Failure> {
        let file = File::open(&path).map_err(|e| io_failure("cannot read", &path, e))?;
        let meta = file
            .metadata()
            .map_err(|e| io_failure("cannot read", &path, e))?;
        if meta.is_file() && meta.len() > u64::from(max_bytes) {
            return Err(too_large(&path, max_bytes));
        }
        Ok(Download {
            path,
            file,
            offset: 0,
        })
    }
}

/// Reads until `buf` is full or the file ends.
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

enum Transfer {
    Write(Upload),
    Read(Download),
}

/// The agent's file transfers: at most one in progress.
#[derive(Default)]
pub struct Files {
    open: Option<Transfer>,
}

impl Files {
    /// Abandons the transfer in progress (an unfinished write leaves no file).
    pub fn abandon(&mut self) {
        self.open = None;
    }

    /// Takes one WriteFile chunk; the file appears after the last one.
    pub fn write(&mut self, chunk: &WriteFile<'_>, flags: u32) -> Result<(), Failure> {
        let prior = self.open.take();
        let path = path_of(chunk.path)?;
        let mut up = if flags & FILE_CONTINUE == 0 {
            drop(prior);
            Upload::create(path)?
        } else {
            match prior {
                Some(Transfer::Write(up)) if up.target == path => up,
                _ => return Err(bad_request("no such file transfer")),
            }
        };
        if up.written != chunk.offset {
            return Err(bad_request("file chunk out of order"));
        }
        up.file
            .write_all(chunk.data)
            .map_err(|e| io_failure("cannot write", &up.target, e))?;
        up.written += chunk.data.len() as u64;
        if flags & FILE_MORE != 0 {
            self.open = Some(Transfer::Write(up));
            return Ok(());
        }
        up.commit(chunk.mode)
    }

    /// Answers one ReadFile request with a chunk read into `out`: its length
    /// and whether the file may go on (the chunk is full).
    pub fn read(
        &mut self,
        req: &ReadFile<'_>,
        flags: u32,
        out: &mut [u8],
    ) -> Result<(usize, bool), Failure> {
        let prior = self.open.take();
        let path = path_of(req.path)?;
        let mut down = if flags & FILE_CONTINUE == 0 {
            drop(prior);
            Download::open(path, req.max_bytes)?
        } else {
            match prior {
                Some(Transfer::Read(down)) if down.path == path => down,
                _ => return Err(bad_request("no such file transfer")),
            }
        };
        if down.offset != req.offset {
            return Err(bad_request("file chunk out of order"));
        }
        let room = req
            .length
            .map_or(MAX_PAYLOAD, |l| l as usize)
            .min(MAX_PAYLOAD)
            .min(out.len());
        let n = read_full(&mut down.file, &mut out[..room])
            .map_err(|e| io_failure("cannot read", &down.path, e))?;
        down.offset += n as u64;
        let more = n > 0 && n == room;
        // A version-1 request wants the whole file in one reply.
        if down.offset > u64::from(req.max_bytes) || (more && req.length.is_none()) {
            return Err(too_large(&down.path, req.max_bytes));
        }
        if more {
            self.open = Some(Transfer::Read(down));
        }
        Ok((n, more))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("zeroboot-agent-test-{}-{name}", std::process::id()))
    }

    fn chunk<'a>(path: &'a str, data: &'a [u8], offset: u64) -> WriteFile<'a> {
        WriteFile {
            path: path.as_bytes(),
            mode: 0o640,
            data,
            offset,
        }
    }

    fn count(dir: &Path) -> usize {
        fs::read_dir(dir).unwrap().count()
    }

    #[test]
    fn chunked_write_appears_only_after_its_last_chunk() {
        let dir = temp("chunks");
        let target = dir.join("sub/file.bin");
        let path = target.to_str().unwrap();
        let mut files = Files::default();
        files.write(&chunk(path, b"hello ", 0), FILE_MORE).unwrap();
        assert!(!target.exists(), "visible before the last chunk");
        files
            .write(&chunk(path, b"world", 6), FILE_CONTINUE)
            .unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"hello world");
        let mode = fs::metadata(&target).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o640);
        assert_eq!(count(&dir.join("sub")), 1, "no temporary left");

        let req = |offset, length| ReadFile {
            path: path.as_bytes(),
            max_bytes: 11,
            offset,
            length: Some(length),
        };
        let mut out = [0u8; 64];
        assert_eq!(files.read(&req(0, 6), 0, &mut out).unwrap(), (6, true));
        assert_eq!(&out[..6], b"hello ");
        let next = files.read(&req(6, 6), FILE_CONTINUE, &mut out).unwrap();
        assert_eq!(next, (5, false));
        assert_eq!(&out[..5], b"world");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn abandoned_or_failed_writes_leave_the_old_file_and_no_temporary() {
        let dir = temp("abandon");
        let target = dir.join("keep.txt");
        let path = target.to_str().unwrap();
        let mut files = Files::default();
        files.write(&chunk(path, b"old", 0), 0).unwrap();
        files
            .write(&chunk(path, b"new, partial", 0), FILE_MORE)
            .unwrap();
        assert_eq!(count(&dir), 2, "the temporary sits beside it");
        files.abandon();
        assert_eq!(count(&dir), 1);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        // A chunk out of order fails and drops the transfer too.
        files.write(&chunk(path, b"new", 0), FILE_MORE).unwrap();
        let err = files
            .write(&chunk(path, b"x", 99), FILE_CONTINUE)
            .unwrap_err();
        assert_eq!(err.code, AgentErrorCode::BadRequest);
        assert_eq!(count(&dir), 1);
        // So does a continuation without a transfer.
        let err = files
            .write(&chunk(path, b"x", 3), FILE_CONTINUE)
            .unwrap_err();
        assert_eq!(err.code, AgentErrorCode::BadRequest);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn reads_enforce_max_bytes_and_version_1_requests_want_one_frame() {
        let dir = temp("limits");
        fs::create_dir_all(&dir).unwrap();
        let target = dir.join("big");
        fs::write(&target, vec![1u8; MAX_PAYLOAD + 1]).unwrap();
        let path = target.to_str().unwrap();
        let mut files = Files::default();
        let mut out = vec![0u8; MAX_PAYLOAD];
        let req = |max_bytes, length| ReadFile {
            path: path.as_bytes(),
            max_bytes,
            offset: 0,
            length,
        };
        let err = files.read(&req(100, Some(10)), 0, &mut out).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::TooLarge);
        let err = files.read(&req(u32::MAX, None), 0, &mut out).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::TooLarge);
        fs::write(&target, b"small").unwrap();
        assert_eq!(files.read(&req(5, None), 0, &mut out).unwrap(), (5, false));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn relative_and_missing_paths_fail_cleanly() {
        let mut files = Files::default();
        let err = files.write(&chunk("rel", b"", 0), 0).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::BadRequest);
        let missing = temp("missing");
        let req = ReadFile {
            path: missing.to_str().unwrap().as_bytes(),
            max_bytes: 10,
            offset: 0,
            length: Some(10),
        };
        let err = files.read(&req, 0, &mut [0u8; 16]).unwrap_err();
        assert_eq!(err.code, AgentErrorCode::Io);
    }
}
