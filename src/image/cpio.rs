//! A writer for the "newc" cpio format, the one the kernel unpacks as an
//! initramfs. Entries carry the owners given (root unless said otherwise)
//! and timestamp 0, so the same inputs give the same archive byte for byte.

use std::io::{self, Write};

const MAGIC: &str = "070701";
const TRAILER: &str = "TRAILER!!!";

/// File type bits of `st_mode`.
const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// (uid, gid) of an entry.
pub type Owner = (u32, u32);
/// Root's.
pub const ROOT: Owner = (0, 0);

/// Streams an archive into `out`.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.write_raw(&[0u8; 3][..pad])
    }

    fn write_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        data: &[u8],
        rdev: (u32, u32),
        owner: Owner,
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{name} exceeds 4 GiB"))
        })?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if mode & S_IFDIR != 0 { 2 } else { 1 };
        let fields = [
            ino,
            mode,
            owner.0,
            owner.1,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str(MAGIC);
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write_raw(header.as_bytes())?;
        self.write_raw(name.as_bytes())?;
        self.write_raw(&[0])?;
        self.pad()?;
        self.write_raw(data)?;
        self.pad()
    }

    /// Adds a directory.
    pub fn dir(&mut self, name: &str, perm: u32, owner: Owner) -> io::Result<()> {
        self.entry(name, S_IFDIR | perm, &[], (0, 0), owner)
    }

    /// Adds a regular file.
    pub fn file(&mut self, name: &str, perm: u32, data: &[u8], owner: Owner) -> io::Result<()> {
        self.entry(name, S_IFREG | perm, data, (0, 0), owner)
    }

    /// Adds a symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str, owner: Owner) -> io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, target.as_bytes(), (0, 0), owner)
    }

    /// Adds a character device node (root's).
    pub fn char_dev(&mut self, name: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(name, S_IFCHR | perm, &[], (major, minor), ROOT)
    }

    /// Writes the trailer and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        self.entry(TRAILER, 0, &[], (0, 0), ROOT)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(entry: &[u8], i: usize) -> u32 {
        let at = 6 + 8 * i;
        u32::from_str_radix(std::str::from_utf8(&entry[at..at + 8]).unwrap(), 16).unwrap()
    }

    #[test]
    fn file_entry_has_newc_header_name_and_aligned_data() {
        let mut w = CpioWriter::new(Vec::new());
        w.file("/init", 0o755, b"hello", (1000, 100)).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..6], b"070701");
        assert_eq!(field(&out, 1), S_IFREG | 0o755);
        assert_eq!((field(&out, 2), field(&out, 3)), (1000, 100));
        assert_eq!(field(&out, 6), 5); // file size
        assert_eq!(field(&out, 11), 5); // "init" + NUL
        // 110-byte header + "init\0" = 115, padded to 116; data then padded to 124.
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(&out[116..121], b"hello");
        assert_eq!(&out[124..130], b"070701");
        assert!(out.windows(10).any(|w| w == b"TRAILER!!!"));
        assert_eq!(out.len() % 4, 0);
    }

    #[test]
    fn device_symlink_and_dir_modes() {
        let mut w = CpioWriter::new(Vec::new());
        w.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let dev_len = w.written as usize;
        w.symlink("bin/python3", "python3.11", ROOT).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(field(&out, 1), S_IFCHR | 0o600);
        assert_eq!((field(&out, 9), field(&out, 10)), (5, 1));
        let link = &out[dev_len..];
        assert_eq!(field(link, 1), S_IFLNK | 0o777);
        assert_eq!(field(link, 6), "python3.11".len() as u32);
    }
}
