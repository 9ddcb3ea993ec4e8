//! The bare guest's file store: files kept whole in one fixed region of the
//! guest's own memory (no allocator, no OS), so the host's chunked transfer,
//! its limits and the copy-on-write isolation of files between forks are
//! tested on any KVM. A chunked write lands after the stored files and
//! becomes visible only when its last chunk arrives; any other request in
//! between abandons it. Mode bits are accepted and not kept (nothing here
//! could enforce them).
//!
//! Files are packed in table order in [`DATA`]; replacing one moves the files
//! after it down, which is a plain memmove of at most the store's size.

use zeroboot_proto::{AgentErrorCode, FILE_CONTINUE, FILE_MORE, MAX_PAYLOAD, ReadFile, WriteFile};

use crate::cell::Global;

/// All file bytes the store holds, committed and in transfer together. The
/// bss holding it must end below the `dirty` command's region (link.ld checks).
pub const STORE_SIZE: usize = 6 << 20;
/// Most files stored at once.
const MAX_FILES: usize = 64;
/// Longest path, in bytes.
const MAX_PATH: usize = 255;

static DATA: Global<[u8; STORE_SIZE]> = Global::new([0; STORE_SIZE]);
static STORE: Global<Store> = Global::new(Store {
    files: [Entry::EMPTY; MAX_FILES],
    count: 0,
    used: 0,
    pending: None,
});

/// A misbehaviour the next read answers with instead of file data, armed by
/// the `badread` command: the host must turn each into a typed error.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BadRead {
    /// Answer honestly.
    No,
    /// Send one byte more than asked.
    Long,
    /// Claim more data with an empty chunk (a host that believed it would
    /// ask forever).
    Stall,
}

static BAD_READ: Global<BadRead> = Global::new(BadRead::No);

/// Arms a misbehaviour for the next read.
pub fn arm(bad: BadRead) {
    // SAFETY: single thread; the only borrow of BAD_READ.
    unsafe { *BAD_READ.get() = bad };
}

/// Why a request failed: the agent error to answer with.
pub type Failure = (AgentErrorCode, &'static [u8]);

#[derive(Clone, Copy)]
struct Name {
    bytes: [u8; MAX_PATH],
    len: usize,
}

impl Name {
    fn new(path: &[u8]) -> Result<Name, Failure> {
        if path.first() != Some(&b'/') || path.len() > MAX_PATH {
            return Err((
                AgentErrorCode::BadRequest,
                b"a path must be absolute and at most 255 bytes",
            ));
        }
        let mut bytes = [0; MAX_PATH];
        bytes[..path.len()].copy_from_slice(path);
        Ok(Name {
            bytes,
            len: path.len(),
        })
    }

    fn is(&self, path: &[u8]) -> bool {
        &self.bytes[..self.len] == path
    }
}

#[derive(Clone, Copy)]
struct Entry {
    name: Name,
    start: usize,
    len: usize,
}

impl Entry {
    const EMPTY: Entry = Entry {
        name: Name {
            bytes: [0; MAX_PATH],
            len: 0,
        },
        start: 0,
        len: 0,
    };
}

/// A write whose last chunk has not arrived: its bytes are at `[used, used + len)`.
struct Pending {
    name: Name,
    len: usize,
}

struct Store {
    files: [Entry; MAX_FILES],
    count: usize,
    /// Bytes of committed files, packed from the start of [`DATA`].
    used: usize,
    pending: Option<Pending>,
}

impl Store {
    fn find(&self, path: &[u8]) -> Option<usize> {
        self.files[..self.count]
            .iter()
            .position(|e| e.name.is(path))
    }

    /// Removes file `i`, moving later files and `pending` bytes after them down.
    fn remove(&mut self, i: usize, pending: usize, data: &mut [u8]) {
        let gone = self.files[i];
        data.copy_within(gone.start + gone.len..self.used + pending, gone.start);
        self.files.copy_within(i + 1..self.count, i);
        self.count -= 1;
        for e in &mut self.files[i..self.count] {
            e.start -= gone.len;
        }
        self.used -= gone.len;
    }

    fn write(&mut self, data: &mut [u8], chunk: &WriteFile<'_>, flags: u32) -> Result<(), Failure> {
        let name = Name::new(chunk.path)?;
        let pending = if flags & FILE_CONTINUE == 0 {
            Pending { name, len: 0 }
        } else {
            match self.pending.take() {
                Some(p) if p.name.is(chunk.path) => p,
                _ => return Err((AgentErrorCode::BadRequest, b"no such file transfer")),
            }
        };
        if pending.len as u64 != chunk.offset {
            return Err((AgentErrorCode::BadRequest, b"file chunk out of order"));
        }
        let at = self.used + pending.len;
        if chunk.data.len() > STORE_SIZE - at {
            return Err((
                AgentErrorCode::TooLarge,
                b"the bare guest's 6 MiB file store is full",
            ));
        }
        data[at..at + chunk.data.len()].copy_from_slice(chunk.data);
        let pending = Pending {
            len: pending.len + chunk.data.len(),
            ..pending
        };
        if flags & FILE_MORE != 0 {
            self.pending = Some(pending);
            return Ok(());
        }
        self.commit(pending, data)
    }

    /// Makes a finished write a file, replacing any file of the same name.
    fn commit(&mut self, p: Pending, data: &mut [u8]) -> Result<(), Failure> {
        if let Some(i) = self.find(&p.name.bytes[..p.name.len]) {
            self.remove(i, p.len, data);
        }
        if self.count == MAX_FILES {
            return Err((
                AgentErrorCode::TooLarge,
                b"the bare guest stores at most 64 files",
            ));
        }
        self.files[self.count] = Entry {
            name: p.name,
            start: self.used,
            len: p.len,
        };
        self.count += 1;
        self.used += p.len;
        Ok(())
    }

    /// Finds the chunk a read asks for: `(start, len, more)` in [`DATA`].
    fn read(&self, req: &ReadFile<'_>) -> Result<(usize, usize, bool), Failure> {
        let i = self
            .find(req.path)
            .ok_or((AgentErrorCode::Io, b"no such file" as &[u8]))?;
        let file = self.files[i];
        if file.len > req.max_bytes as usize {
            return Err((AgentErrorCode::TooLarge, b"file is larger than max_bytes"));
        }
        let offset = usize::try_from(req.offset)
            .ok()
            .filter(|&o| o <= file.len)
            .ok_or((
                AgentErrorCode::BadRequest,
                b"offset is past the end" as &[u8],
            ))?;
        let room = req
            .length
            .map_or(MAX_PAYLOAD, |l| l as usize)
            .min(MAX_PAYLOAD);
        let n = room.min(file.len - offset);
        let more = offset + n < file.len;
        if more && req.length.is_none() {
            return Err((AgentErrorCode::TooLarge, b"file does not fit one frame"));
        }
        Ok((file.start + offset, n, more))
    }
}

/// Handles one WriteFile chunk; a failure abandons the transfer.
pub fn write(chunk: &WriteFile<'_>, flags: u32) -> Result<(), Failure> {
    // SAFETY: the guest is single-threaded and these are the only borrows of
    // STORE and DATA, released before the function returns.
    let (store, data) = unsafe { (STORE.get(), DATA.get()) };
    store.write(data, chunk, flags)
}

/// Handles one ReadFile request: the reply's flags and payload. The payload
/// stays valid until the next request is handled.
pub fn read(req: &ReadFile<'_>) -> Result<(u32, &'static [u8]), Failure> {
    // SAFETY: single thread; STORE's borrow ends here, and DATA changes only
    // while a later WriteFile is handled, after the reply was sent.
    let (store, data) = unsafe { (STORE.get(), DATA.get()) };
    // SAFETY: single thread; the only borrow of BAD_READ.
    let bad = core::mem::replace(unsafe { BAD_READ.get() }, BadRead::No);
    let asked = req.length.map_or(0, |l| l as usize).min(MAX_PAYLOAD - 1);
    match bad {
        BadRead::Long => return Ok((0, &data[..asked + 1])),
        BadRead::Stall => return Ok((FILE_MORE, &data[..0])),
        BadRead::No => {}
    }
    let (start, n, more) = store.read(req)?;
    let flags = if more { FILE_MORE } else { 0 };
    Ok((flags, &data[start..start + n]))
}

/// Abandons a write in transfer: any request but its next chunk does. Only
/// stores when there is one, so an exec never copies the store's page.
pub fn abandon() {
    // SAFETY: single thread; the only borrow of STORE.
    let store = unsafe { STORE.get() };
    if store.pending.is_some() {
        store.pending = None;
    }
}
