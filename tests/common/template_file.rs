//! Template files taken apart and put back together the way an attacker
//! (or a bad disk) would, with the checksum recomputed as the format
//! documents it (src/engine/file.rs), so every check past it is reached.

#![allow(dead_code)]

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

/// Bytes per guest page.
pub const PAGE: u64 = 4096;

/// A temporary directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("zeroboot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The u64 LE at `at`.
pub fn word(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A template file taken apart: prefix words, header JSON, and the file.
pub struct Parts {
    pub path: PathBuf,
    pub header: Value,
    pub body_offset: u64,
    pub memory: u64,
}

impl Parts {
    pub fn read(path: &Path) -> Parts {
        let bytes = std::fs::read(path).unwrap();
        let (len, body_offset, memory) = (word(&bytes, 8), word(&bytes, 16), word(&bytes, 24));
        let header = serde_json::from_slice(&bytes[64..64 + len as usize]).unwrap();
        Parts {
            path: path.to_owned(),
            header,
            body_offset,
            memory,
        }
    }

    /// Writes the header back (the body moves if its length changes) and
    /// recomputes the checksum as src/engine/file.rs documents it.
    pub fn write(&self) {
        let old = std::fs::read(&self.path).unwrap();
        let header = serde_json::to_vec(&self.header).unwrap();
        let body_offset = (64 + header.len() as u64).next_multiple_of(PAGE);
        let mut out = vec![0u8; body_offset as usize];
        out[..8].copy_from_slice(b"ZBTPL\0\0\x02");
        out[8..16].copy_from_slice(&(header.len() as u64).to_le_bytes());
        out[16..24].copy_from_slice(&body_offset.to_le_bytes());
        out[24..32].copy_from_slice(&self.memory.to_le_bytes());
        out[64..64 + header.len()].copy_from_slice(&header);
        let body = &old[self.body_offset as usize..];
        let mut hash = xxhash_rust::xxh3::Xxh3::new();
        hash.update(&out[..32]);
        hash.update(&header);
        for (i, page) in body.chunks(PAGE as usize).enumerate() {
            if page.iter().any(|&b| b != 0) {
                hash.update(&(i as u64).to_le_bytes());
                hash.update(page);
            }
        }
        out[32..40].copy_from_slice(&hash.digest().to_le_bytes());
        out.extend_from_slice(body);
        std::fs::write(&self.path, out).unwrap();
    }

    /// Writes `bytes` into guest memory at `gpa` (the body).
    pub fn poke_body(&self, gpa: u64, bytes: &[u8]) {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&self.path)
            .unwrap();
        f.write_all_at(bytes, self.body_offset + gpa).unwrap();
    }

    /// The bytes of KVM structure `field` of the vCPU state.
    pub fn vcpu_bytes(&mut self, field: &str) -> &mut Vec<Value> {
        self.header["state"]["vcpu"][field].as_array_mut().unwrap()
    }
}
