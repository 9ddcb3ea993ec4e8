//! The template file format, versioned and self-describing instead of guessed:
//!
//! ```text
//! "ZBTPL\0\0\x01"                8 bytes: magic and format version 1
//! u64 LE header length, header   JSON: memory size, machine state, mailbox
//! repeated: u64 LE page index, 4096 bytes    every non-zero page
//! u64 LE u64::MAX                end marker
//! ```
//!
//! Zero pages are skipped, so a file holds only what the guest touched.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::EngineError;
use super::template::{Snapshot, Template};
use crate::agent::Mailbox;
use crate::image::spec_image::Manifest;
use crate::vmm::MachineState;
use crate::vmm::memory::Memfd;

const MAGIC: &[u8; 8] = b"ZBTPL\0\0\x01";
const PAGE: usize = 4096;
const END: u64 = u64::MAX;
/// Headers are a few tens of KiB; anything larger is not ours.
const MAX_HEADER: u64 = 16 << 20;
/// Largest guest memory a file may claim.
const MAX_MEMORY: usize = 64 << 30;

#[derive(Deserialize)]
struct Header {
    memory_bytes: usize,
    state: MachineState,
    mailbox: Mailbox,
    /// Templates built from a spec (absent in older files and others).
    #[serde(default)]
    manifest: Option<Manifest>,
}

/// [`Header`] as written, borrowing the template's state.
#[derive(Serialize)]
struct HeaderRef<'a> {
    memory_bytes: usize,
    state: &'a MachineState,
    mailbox: Mailbox,
    #[serde(skip_serializing_if = "Option::is_none")]
    manifest: Option<&'a Manifest>,
}

/// What `zeroboot template inspect` shows of a file, read from its header
/// alone.
#[derive(Debug, Clone, Serialize)]
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

/// Writes `tpl` to `path`; returns the file size.
pub(crate) fn write(tpl: &Template, path: &Path) -> Result<u64, EngineError> {
    let header = serde_json::to_vec(&HeaderRef {
        memory_bytes: tpl.memory_bytes(),
        state: &tpl.state,
        mailbox: tpl.mailbox,
        manifest: tpl.manifest.as_ref(),
    })
    .map_err(|e| err(path, e))?;
    let file = File::create(path).map_err(|e| err(path, e))?;
    let mut out = BufWriter::new(file);
    let io = |e: std::io::Error| err(path, e);
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    let mut page = vec![0u8; PAGE];
    for index in 0..tpl.memory_bytes() / PAGE {
        tpl.memfd
            .file()
            .read_exact_at(&mut page, (index * PAGE) as u64)
            .map_err(io)?;
        if page.iter().any(|&b| b != 0) {
            out.write_all(&(index as u64).to_le_bytes()).map_err(io)?;
            out.write_all(&page).map_err(io)?;
        }
    }
    out.write_all(&END.to_le_bytes()).map_err(io)?;
    let file = out.into_inner().map_err(|e| err(path, e.error()))?;
    file.sync_all().map_err(io)?;
    Ok(file.metadata().map_err(io)?.len())
}

/// Reads and checks a template file's header.
fn read_header(path: &Path, input: &mut impl Read) -> Result<Header, EngineError> {
    let io = |e: std::io::Error| err(path, e);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(io)?;
    if &magic != MAGIC {
        return Err(err(path, "not a zeroboot template (bad magic or version)"));
    }
    let len = read_u64(input).map_err(io)?;
    if len > MAX_HEADER {
        return Err(err(path, format!("header of {len} bytes is too large")));
    }
    let mut header = vec![0u8; len as usize];
    input.read_exact(&mut header).map_err(io)?;
    let header: Header = serde_json::from_slice(&header).map_err(|e| err(path, e))?;
    if header.memory_bytes == 0
        || !header.memory_bytes.is_multiple_of(PAGE)
        || header.memory_bytes > MAX_MEMORY
    {
        return Err(err(
            path,
            format!("invalid memory size {}", header.memory_bytes),
        ));
    }
    Ok(header)
}

/// What a template file holds, from its header (guest memory is not read).
pub(crate) fn inspect(path: &Path) -> Result<FileInfo, EngineError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let file_bytes = file.metadata().map_err(|e| err(path, e))?.len();
    let header = read_header(path, &mut BufReader::new(file))?;
    Ok(FileInfo {
        file_bytes,
        memory_bytes: header.memory_bytes,
        manifest: header.manifest,
    })
}

/// Reads a template file into a sealed memfd and its state.
pub(crate) fn read(path: &Path) -> Result<Snapshot, EngineError> {
    let file = File::open(path).map_err(|e| err(path, e))?;
    let mut input = BufReader::new(file);
    let io = |e: std::io::Error| err(path, e);
    let header = read_header(path, &mut input)?;
    let memfd = Memfd::create("zeroboot-loaded", header.memory_bytes)?;
    let pages = (header.memory_bytes / PAGE) as u64;
    let mut page = vec![0u8; PAGE];
    loop {
        let index = read_u64(&mut input).map_err(io)?;
        if index == END {
            break;
        }
        if index >= pages {
            return Err(err(path, format!("page {index} is beyond guest memory")));
        }
        input.read_exact(&mut page).map_err(io)?;
        memfd
            .file()
            .write_all_at(&page, index * PAGE as u64)
            .map_err(io)?;
    }
    memfd.seal()?;
    Ok(Snapshot {
        memfd,
        state: header.state,
        mailbox: header.mailbox,
        manifest: header.manifest,
    })
}

fn read_u64(r: &mut impl Read) -> std::io::Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}
