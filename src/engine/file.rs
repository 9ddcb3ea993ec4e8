//! The template file: versioned, self-contained, checked, and mapped rather
//! than copied.
//!
//! ```text
//! 0   "ZBTPL\0\0\x02"   magic and format version 2
//! 8   u64 LE            header length H (at most 1 MiB)
//! 16  u64 LE            body offset B = H + 64 rounded up to a page
//! 24  u64 LE            guest memory size M (whole pages, 1 MiB ..= 3 GiB)
//! 32  u64 LE            checksum (below)
//! 40  24 zero bytes
//! 64  header            JSON: machine state and mailbox
//! B   body              M bytes of guest memory; zero pages are holes
//! ```
//!
//! The file is exactly B + M bytes long. Its body is guest memory as the
//! guest sees it, page for page, so a load maps it copy-on-write from the
//! page cache: nothing is copied, only the pages a fork touches are read, and
//! every worker that loads the file shares one copy. Zero pages are left as
//! holes, so the file takes the disk space of what the guest touched.
//!
//! The checksum is XXH3-64 over bytes 0..32, the header, and every non-zero
//! page of the body as its u64 LE page index followed by its 4096 bytes, in
//! ascending order. A load reads only the body's data extents (SEEK_DATA), so
//! it costs time in proportion to what the guest touched, not to its size.
//! It detects corruption, not tampering: anyone who can write the file can
//! recompute it. The worker's safety does not rest on it (docs/template-files.md).
//!
//! A branch is saved self-contained: its whole memory, not a delta naming
//! its parent's file. A delta would make a file useless without another one,
//! unchanged, at a path that means the same on the host that loads it; its
//! saving (the shared base, written once) is small next to that, since holes
//! already keep untouched memory off the disk.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use xxhash_rust::xxh3::Xxh3;

use super::layer::Layer;
use super::{CancelToken, EngineError};
use crate::agent::Mailbox;
use crate::image::spec_image::Manifest;
use crate::vmm::memory::{MemoryFile, PAGE};
use crate::vmm::{Hypervisor, MachineState, linux};

const MAGIC: &[u8; 8] = b"ZBTPL\0\0\x02";
const PREFIX: usize = 64;
/// Headers are tens of KiB; anything much larger is not ours.
const MAX_HEADER: u64 = 1 << 20;
/// Smallest guest memory a file may hold.
const MIN_MEMORY: u64 = 1 << 20;
/// Largest: the largest guest this worker builds (a Linux guest).
const MAX_MEMORY: u64 = linux::MAX_RAM;
/// Body bytes read per system call while checking a file.
const READ_CHUNK: usize = 1 << 20;
/// File systems whose "regular files" are not data: reading them has effects
/// or never ends (procfs, sysfs, debugfs, tracefs, securityfs, configfs,
/// efivarfs, cgroup v1 and v2, bpffs).
const PSEUDO_FS: &[i64] = &[
    0x9fa0,
    0x6265_6572,
    0x6462_6720,
    0x7472_6163,
    0x7363_6673,
    0x6265_6570,
    0xde5e_81e4,
    0x0027_e0eb,
    0x6367_7270,
    0xcafe_4a11,
];

#[derive(serde::Deserialize)]
struct Header {
    state: MachineState,
    mailbox: Mailbox,
    /// What the image holds, for templates built from a spec.
    #[serde(default)]
    manifest: Option<Manifest>,
}

/// [`Header`] as written, borrowing the layer's state.
#[derive(serde::Serialize)]
struct HeaderRef<'a> {
    state: &'a MachineState,
    mailbox: Mailbox,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a Manifest>,
}

/// What `zeroboot template inspect` shows of a file, read from its prefix
/// and header alone (the body is neither read nor checked).
#[derive(Debug, Clone, serde::Serialize)]
pub struct FileInfo {
    /// The file's size.
    pub file_bytes: u64,
    /// Guest memory.
    pub memory_bytes: usize,
    /// What its image holds, when it was built from a spec.
    pub manifest: Option<Manifest>,
}

fn err(path: &Path, detail: impl ToString) -> EngineError {
    EngineError::TemplateFile {
        path: path.display().to_string(),
        detail: detail.to_string(),
    }
}

/// The fixed 64 bytes at the start of a file.
struct Prefix {
    header_len: u64,
    body_offset: u64,
    memory: u64,
    checksum: u64,
}

impl Prefix {
    fn body_offset_for(header_len: u64) -> u64 {
        (PREFIX as u64 + header_len).next_multiple_of(PAGE as u64)
    }

    /// The prefix's bytes, with `checksum` in place.
    fn bytes(&self) -> [u8; PREFIX] {
        let mut b = [0u8; PREFIX];
        b[..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.header_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.body_offset.to_le_bytes());
        b[24..32].copy_from_slice(&self.memory.to_le_bytes());
        b[32..40].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    /// Parses and range-checks a prefix.
    fn parse(b: &[u8; PREFIX]) -> Result<Prefix, String> {
        if &b[..8] != MAGIC {
            return Err("not a zeroboot template of this version (bad magic)".into());
        }
        let word = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let p = Prefix {
            header_len: word(8),
            body_offset: word(16),
            memory: word(24),
            checksum: word(32),
        };
        if b[40..].iter().any(|&x| x != 0) {
            return Err("reserved prefix bytes are not zero".into());
        }
        if p.header_len == 0 || p.header_len > MAX_HEADER {
            return Err(format!(
                "header of {} bytes (at most {MAX_HEADER})",
                p.header_len
            ));
        }
        if p.body_offset != Prefix::body_offset_for(p.header_len) {
            return Err(format!(
                "body at {} (a {}-byte header puts it at {})",
                p.body_offset,
                p.header_len,
                Prefix::body_offset_for(p.header_len)
            ));
        }
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&p.memory) || !p.memory.is_multiple_of(PAGE as u64) {
            return Err(format!(
                "guest memory of {} bytes (this worker takes whole pages from {MIN_MEMORY} to {MAX_MEMORY})",
                p.memory
            ));
        }
        Ok(p)
    }

    /// The checksum's first input: the prefix without its checksum.
    fn hashed(&self) -> [u8; 32] {
        self.bytes()[..32].try_into().expect("32 bytes")
    }
}

/// Opens `path` for reading, accepting only a regular file on a file system
/// that holds data: a FIFO, a device, a socket or a /proc or /sys file is
/// refused before anything is read from it. The file is looked at before it
/// is opened (opening some devices has effects), and opened non-blocking (a
/// FIFO swapped in meanwhile cannot stall the open) and looked at again.
fn open_input(path: &Path) -> Result<File, EngineError> {
    let kind = |m: &std::fs::Metadata| {
        use std::os::unix::fs::FileTypeExt;
        let t = m.file_type();
        if t.is_fifo() {
            "a FIFO"
        } else if t.is_char_device() || t.is_block_device() {
            "a device"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        }
    };
    let meta = std::fs::metadata(path).map_err(|e| err(path, e))?;
    if !meta.is_file() {
        return Err(err(
            path,
            format!("{}: only regular files are read", kind(&meta)),
        ));
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| err(path, e))?;
    let meta = file.metadata().map_err(|e| err(path, e))?;
    if !meta.is_file() {
        return Err(err(
            path,
            format!("{}: only regular files are read", kind(&meta)),
        ));
    }
    let fs = fs_magic(&file).map_err(|e| err(path, e))?;
    if PSEUDO_FS.contains(&fs) {
        return Err(err(
            path,
            format!("on a pseudo file system (magic {fs:#x}): only files holding data are read"),
        ));
    }
    Ok(file)
}

/// The file system type of an open file (statfs's f_type).
fn fs_magic(file: &File) -> io::Result<i64> {
    use std::os::fd::AsRawFd;
    // SAFETY: fstatfs writes only into the zeroed struct we pass.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above, on a descriptor we own.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// A template file opened by [`open`]: its root layer, and the check of its
/// memory still to be made.
pub(crate) struct Opened {
    pub layer: Layer,
    pub manifest: Option<Manifest>,
    pub body_check: BodyCheck,
}

/// The checksum of a template file, to be finished over its memory.
pub(crate) struct BodyCheck {
    path: PathBuf,
    body: Arc<MemoryFile>,
    /// Fed the prefix and header so far.
    hash: Xxh3,
    expected: u64,
}

impl BodyCheck {
    /// Reads and hashes every data page of the file's memory; an error if
    /// the checksum disagrees (the file is corrupt) or the file cannot be read.
    pub fn verify(&self, cancel: &CancelToken) -> Result<(), EngineError> {
        let mut hash = self.hash.clone();
        hash_body(&self.body, &mut hash, cancel).map_err(|e| match e {
            Hashing::Cancelled => EngineError::Cancelled,
            Hashing::Io(e) => err(&self.path, e),
        })?;
        if hash.digest() != self.expected {
            return Err(err(&self.path, "checksum mismatch: the file is corrupt"));
        }
        Ok(())
    }
}

/// Opens a template file: checks its prefix, sizes, header ranges and that
/// this host can run its vCPU, and returns a root layer whose memory is the
/// file's body, mapped on fork. Its memory is not checked yet: nothing may
/// use the layer but a probe before [`BodyCheck::verify`] has passed (a
/// header that fails its checks is reported as corruption if the checksum
/// fails too).
pub(crate) fn open(path: &Path, hv: &Hypervisor) -> Result<Opened, EngineError> {
    let (file, p, header) = open_checked(path)?;
    let mut hash = Xxh3::new();
    hash.update(&p.hashed());
    hash.update(&header);
    let body = Arc::new(MemoryFile::from_file(
        file,
        p.body_offset,
        p.memory as usize,
    ));
    let body_check = BodyCheck {
        path: path.to_path_buf(),
        body: Arc::clone(&body),
        hash,
        expected: p.checksum,
    };
    match parse_header(path, &header, &body, hv) {
        Ok(header) => Ok(Opened {
            layer: Layer::root(body, header.state, header.mailbox),
            manifest: header.manifest,
            body_check,
        }),
        Err(e) => {
            body_check.verify(&CancelToken::new())?;
            Err(e)
        }
    }
}

/// The header of the file at `path`, checked against its memory and this host.
fn parse_header(
    path: &Path,
    header: &[u8],
    body: &MemoryFile,
    hv: &Hypervisor,
) -> Result<Header, EngineError> {
    let header: Header =
        serde_json::from_slice(header).map_err(|e| err(path, format!("header: {e}")))?;
    header
        .mailbox
        .check(body.size())
        .map_err(|e| err(path, format!("mailbox: {e}")))?;
    header
        .state
        .check(hv)
        .map_err(|e| err(path, format!("machine state: {e}")))?;
    if let Some(why) =
        crate::vmm::cpuid_incompatibility(&header.state.vcpu.cpuid, hv.cpuid().as_slice())
    {
        return Err(EngineError::TemplateIncompatible {
            path: path.display().to_string(),
            detail: why,
        });
    }
    Ok(header)
}

/// Opens a template file and reads its prefix (range-checked, and agreeing
/// with the file's length) and its header's bytes.
fn open_checked(path: &Path) -> Result<(File, Prefix, Vec<u8>), EngineError> {
    let file = open_input(path)?;
    let io = |e: io::Error| err(path, e);
    let mut prefix = [0u8; PREFIX];
    file.read_exact_at(&mut prefix, 0)
        .map_err(|e| err(path, format!("too short for a template file: {e}")))?;
    let p = Prefix::parse(&prefix).map_err(|e| err(path, e))?;
    let size = file.metadata().map_err(io)?.size();
    if size != p.body_offset + p.memory {
        return Err(err(
            path,
            format!(
                "{size} bytes long, but its prefix says {}",
                p.body_offset + p.memory
            ),
        ));
    }
    let mut header = vec![0u8; p.header_len as usize];
    file.read_exact_at(&mut header, PREFIX as u64).map_err(io)?;
    Ok((file, p, header))
}

/// What a template file holds, from its prefix and header (guest memory is
/// neither read nor checked: [`BodyCheck::verify`] does that).
pub(crate) fn inspect(path: &Path) -> Result<FileInfo, EngineError> {
    let (_, p, header) = open_checked(path)?;
    let header: Header =
        serde_json::from_slice(&header).map_err(|e| err(path, format!("header: {e}")))?;
    Ok(FileInfo {
        file_bytes: p.body_offset + p.memory,
        memory_bytes: p.memory as usize,
        manifest: header.manifest,
    })
}

/// Why hashing a file's memory stopped.
enum Hashing {
    Io(io::Error),
    Cancelled,
}

/// Feeds every non-zero page of `body` (index, contents) to `hash`, reading
/// only its data extents; looks at `cancel` every [`READ_CHUNK`].
fn hash_body(body: &MemoryFile, hash: &mut Xxh3, cancel: &CancelToken) -> Result<(), Hashing> {
    let mut buf = vec![0u8; READ_CHUNK];
    let pages = body.pages();
    let mut i = 0;
    while i < pages {
        if !body.has_data(i).map_err(Hashing::Io)? {
            i += 1;
            continue;
        }
        if cancel.is_cancelled() {
            return Err(Hashing::Cancelled);
        }
        let mut run = 1;
        while i + run < pages
            && run < READ_CHUNK / PAGE
            && body.has_data(i + run).map_err(Hashing::Io)?
        {
            run += 1;
        }
        let chunk = &mut buf[..run * PAGE];
        body.read((i * PAGE) as u64, chunk).map_err(Hashing::Io)?;
        for (k, page) in chunk.chunks_exact(PAGE).enumerate() {
            if page.iter().any(|&b| b != 0) {
                hash.update(&((i + k) as u64).to_le_bytes());
                hash.update(page);
            }
        }
        i += run;
    }
    Ok(())
}

/// Writes `layer` to a new file at `path`, never over an existing one and
/// never through a symlink: it is written under a temporary name in the same
/// directory (created exclusively, not following links), synced, then
/// renamed into place only if nothing exists there. Returns the file size.
pub(crate) fn write(
    layer: &Layer,
    manifest: Option<&Manifest>,
    path: &Path,
    cancel: &CancelToken,
) -> Result<u64, EngineError> {
    let tmp = temp_path(path).ok_or_else(|| err(path, "not a file name"))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| err(path, e))?;
    let written = fill(&file, layer, manifest, path, cancel).and_then(|size| {
        link_new(&tmp, path).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => err(path, "a file already exists there"),
            _ => err(path, e),
        })?;
        Ok(size)
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes the whole template into `file` and syncs it.
fn fill(
    file: &File,
    layer: &Layer,
    manifest: Option<&Manifest>,
    path: &Path,
    cancel: &CancelToken,
) -> Result<u64, EngineError> {
    let io = |e: io::Error| err(path, e);
    let header = serde_json::to_vec(&HeaderRef {
        state: &layer.state,
        mailbox: layer.mailbox,
        manifest,
    })
    .map_err(|e| err(path, e))?;
    let mut p = Prefix {
        header_len: header.len() as u64,
        body_offset: Prefix::body_offset_for(header.len() as u64),
        memory: layer.memory_bytes() as u64,
        checksum: 0,
    };
    file.set_len(p.body_offset + p.memory).map_err(io)?;
    file.write_all_at(&header, PREFIX as u64).map_err(io)?;
    let mut hash = Xxh3::new();
    hash.update(&p.hashed());
    hash.update(&header);
    let mut page = [0u8; PAGE];
    for gpa in (0..p.memory).step_by(PAGE) {
        if gpa % (64 << 20) == 0 && cancel.is_cancelled() {
            return Err(EngineError::Cancelled);
        }
        if !layer.may_have_data(gpa).map_err(io)? {
            continue;
        }
        layer.read_page(gpa, &mut page).map_err(io)?;
        if page.iter().any(|&b| b != 0) {
            file.write_all_at(&page, p.body_offset + gpa).map_err(io)?;
            hash.update(&(gpa / PAGE as u64).to_le_bytes());
            hash.update(&page);
        }
    }
    p.checksum = hash.digest();
    file.write_all_at(&p.bytes(), 0).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(p.body_offset + p.memory)
}

/// `.NAME.tmp-PID-RANDOM` beside `path`.
fn temp_path(path: &Path) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    let mut r = [0u8; 8];
    getrandom::fill(&mut r).ok()?;
    let tmp = format!(
        ".{name}.tmp-{}-{:x}",
        std::process::id(),
        u64::from_le_bytes(r)
    );
    Some(path.with_file_name(tmp))
}

/// Gives `tmp` the name `path` only if nothing (not even a dangling symlink)
/// has that name, then removes the temporary name.
fn link_new(tmp: &Path, path: &Path) -> io::Result<()> {
    std::fs::hard_link(tmp, path)?;
    std::fs::remove_file(tmp)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the new name durable; a directory that cannot be synced
        // (some file systems refuse) still holds the file.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(())
}
