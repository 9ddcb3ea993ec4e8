use super::*;

/// A tar archive built entry by entry; names are written raw, so hostile
/// ones (`../x`) go in as they are.
#[derive(Default)]
struct Tar(Vec<u8>);

impl Tar {
    fn entry(
        mut self,
        kind: tar::EntryType,
        name: &str,
        mode: u32,
        link: &str,
        data: &[u8],
    ) -> Tar {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_uid(if name.contains("owned") { 1000 } else { 0 });
        h.set_gid(if name.contains("owned") { 1000 } else { 0 });
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, data).unwrap();
        let mut bytes = b.into_inner().unwrap();
        bytes.truncate(bytes.len() - 1024); // drop the end-of-archive blocks
        self.0.extend(bytes);
        self
    }
    fn file(self, name: &str, data: &str) -> Tar {
        self.entry(tar::EntryType::Regular, name, 0o644, "", data.as_bytes())
    }
    fn dir(self, name: &str) -> Tar {
        self.entry(tar::EntryType::Directory, name, 0o755, "", b"")
    }
    fn symlink(self, name: &str, target: &str) -> Tar {
        self.entry(tar::EntryType::Symlink, name, 0o777, target, b"")
    }
    fn hardlink(self, name: &str, target: &str) -> Tar {
        self.entry(tar::EntryType::Link, name, 0o644, target, b"")
    }
    fn bytes(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

struct Stage {
    root: PathBuf,
    outside: PathBuf,
    owners: Owners,
    budget: Budget,
}

impl Stage {
    fn new(tag: &str) -> Stage {
        let base =
            std::env::temp_dir().join(format!("zeroboot-layers-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let (root, outside) = (base.join("root"), base.join("outside"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        Stage {
            root,
            outside,
            owners: Owners::new(),
            budget: Budget::default(),
        }
    }
    fn apply(&mut self, tar: Tar) -> Result<(), LayerError> {
        apply(
            &self.root,
            &tar.bytes()[..],
            true,
            &mut self.owners,
            &mut self.budget,
        )
    }
    fn read(&self, p: &str) -> Option<String> {
        fs::read_to_string(self.root.join(p)).ok()
    }
    /// Nothing was written next to the root.
    fn outside_untouched(&self) {
        let left: Vec<_> = fs::read_dir(&self.outside).unwrap().collect();
        assert!(left.is_empty(), "written outside the root: {left:?}");
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(self.root.parent().unwrap());
    }
}

#[test]
fn layers_stack_with_whiteouts_and_opaque_directories() {
    let mut s = Stage::new("wh");
    s.apply(
        Tar::default()
            .dir("etc/")
            .file("etc/keep", "1")
            .file("etc/gone", "1")
            .dir("opt/")
            .file("opt/old", "1")
            .dir("opt/sub/")
            .file("opt/sub/deep", "1"),
    )
    .unwrap();
    s.apply(
        Tar::default()
            .file("etc/.wh.gone", "")
            .dir("opt/")
            .file("opt/new", "2")
            .file("opt/.wh..wh..opq", "")
            .file("opt/newer", "3"),
    )
    .unwrap();
    assert_eq!(s.read("etc/keep").as_deref(), Some("1"));
    assert_eq!(s.read("etc/gone"), None);
    assert_eq!(s.read("opt/old"), None, "opaque dir hides the lower layer");
    assert!(!s.root.join("opt/sub").exists());
    assert_eq!(s.read("opt/new").as_deref(), Some("2"), "same layer stays");
    assert_eq!(s.read("opt/newer").as_deref(), Some("3"));
}

#[test]
fn modes_owners_symlinks_and_hard_links_are_kept() {
    let mut s = Stage::new("meta");
    s.apply(
        Tar::default()
            .entry(tar::EntryType::Regular, "bin/tool", 0o4755, "", b"x")
            .dir("home/")
            .dir("home/owned/")
            .file("home/owned/notes", "n")
            .symlink("bin/alias", "tool")
            .hardlink("bin/twin", "bin/tool"),
    )
    .unwrap();
    let mode = fs::metadata(s.root.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0o4755);
    assert_eq!(s.owners.get(Path::new("home/owned")), Some(&(1000, 1000)));
    assert_eq!(s.owners.get(Path::new("bin/tool")), None);
    assert_eq!(
        fs::read_link(s.root.join("bin/alias")).unwrap(),
        Path::new("tool")
    );
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        fs::metadata(s.root.join("bin/tool")).unwrap(),
        fs::metadata(s.root.join("bin/twin")).unwrap(),
    );
    assert_eq!(a.ino(), b.ino(), "a hard link, not a copy");
}

#[test]
fn hostile_names_and_links_never_write_outside_the_root() {
    let mut s = Stage::new("hostile");
    let outside = s.outside.display().to_string();
    // Dot-dot in a name.
    assert!(matches!(
        s.apply(Tar::default().file("../escape", "x")),
        Err(LayerError::Escape(_))
    ));
    assert!(matches!(
        s.apply(Tar::default().file("a/../../escape", "x")),
        Err(LayerError::Escape(_))
    ));
    // An absolute symlink to a host directory, then a write through it.
    s.apply(
        Tar::default()
            .symlink("evil", &outside)
            .file("evil/pwned", "x")
            .symlink("up", "../../..")
            .file("up/pwned2", "x"),
    )
    .unwrap();
    assert!(
        s.root
            .join(outside.trim_start_matches('/'))
            .join("pwned")
            .is_file()
    );
    assert_eq!(
        s.read("pwned2").as_deref(),
        Some("x"),
        "`..` stops at the root"
    );
    // A file replacing a symlink that points outside replaces the link.
    s.apply(
        Tar::default()
            .symlink("link", &format!("{outside}/target"))
            .file("link", "mine"),
    )
    .unwrap();
    assert_eq!(s.read("link").as_deref(), Some("mine"));
    // Hard links to host files or out of the root.
    assert!(matches!(
        s.apply(Tar::default().hardlink("h", "/etc/passwd")),
        Err(LayerError::BadLink { .. })
    ));
    assert!(matches!(
        s.apply(Tar::default().hardlink("h", "../../etc/passwd")),
        Err(LayerError::Escape(_))
    ));
    // A whiteout cannot remove outside either.
    fs::write(s.outside.join("victim"), "v").unwrap();
    s.apply(Tar::default().file("evil/.wh.victim", "")).unwrap();
    assert!(s.outside.join("victim").is_file());
    fs::remove_file(s.outside.join("victim")).unwrap();
    s.outside_untouched();
}

#[test]
fn garbage_is_not_a_tar() {
    let mut s = Stage::new("garbage");
    let r = apply(
        &s.root,
        &b"this is not a tar archive at all, no"[..],
        true,
        &mut s.owners,
        &mut s.budget,
    );
    assert!(matches!(r, Err(LayerError::Tar(_))), "{r:?}");
}
