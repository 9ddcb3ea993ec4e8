//! A guest image assembled from a template spec ([`crate::spec`]): the
//! root filesystem (the python base or an OCI image, Debian packages,
//! Python packages, the user's files, `/etc/zeroboot/agent.conf` with the
//! exec defaults and preloads, the kernel's network modules as in the
//! default image) packed as an initramfs beside Debian's
//! kernel, and a [`Manifest`] of what went in (the versions resolved,
//! recorded in the template so a build can be reproduced).
//!
//! Phases: resolve (Debian closure; uv resolves while it installs),
//! download (Debian packages: bytes), assemble. Everything is built in a
//! work directory that is removed on success and failure alike; the cache
//! (`spec/<digest>/`) only ever receives a finished image, by rename. The
//! digest covers what decides the image's bytes (the spec without its
//! `warmup`, `memory_mib` and `network`, the sizes and times of the host
//! files it names, the agent, this module's layout version; not the Node.js
//! reseed module packed when the image has `node`): a second build of the
//! same spec is a lookup that needs no network, which is how the test lane
//! (no network inside) builds templates from specs that the host prepared.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cache::Fingerprint;
use super::debian::{Deb, Debian, Package};
use super::layers::Owners;
use super::progress::{Phase, Progress, Reporter};
use super::wheels::{self, Installed};
use super::{ImageError, Profile, agent, cache, initramfs, kernel, libs, oci, python, scoped};
use crate::spec::{Base, Spec, Stdlib};

/// Part of every spec image's digest: bump when the assembly changes.
const LAYOUT_VERSION: &[u8] = b"zeroboot-spec-image-3";
/// Where the agent looks for the Node.js reseed module (the agent's
/// `GUEST_NODE_ADDON`), relative to the root.
const NODE_ADDON: &str = "usr/lib/zeroboot/reseed.node";
/// Where an image may keep `node` (Debian's package; the official images).
const NODE_PATHS: [&str; 3] = ["usr/bin/node", "usr/local/bin/node", "bin/node"];
/// The busybox of the python base (static: needs no library).
const BUSYBOX: &str = "busybox-static";
/// Libraries manylinux wheels may expect from the system besides glibc.
const WHEEL_SYSTEM_LIBS: [&str; 2] = ["libgcc-s1", "libstdc++6"];
/// Documentation Debian packages carry that no sandbox reads.
const PRUNE: [&str; 5] = [
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "usr/share/lintian",
];
/// uid/gid given to a named user of the python base.
const FIRST_UID: u32 = 1000;

/// What went into an image, recorded in its template.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `python`, or `oci:PATH`.
    pub base: String,
    /// Python packages installed, with versions.
    pub python: Vec<Installed>,
    /// Debian packages installed for `debian.packages` (their closure).
    pub debian: Vec<Package>,
    /// Modules the zygote imports before the snapshot.
    pub preload: Vec<String>,
    /// The initramfs size.
    pub initramfs_bytes: u64,
    /// The spec it came from.
    pub spec: serde_json::Value,
}

/// A built (or cached) spec image.
#[derive(Debug, Clone)]
pub struct SpecImage {
    /// Debian's kernel.
    pub kernel: PathBuf,
    /// The initramfs.
    pub initramfs: PathBuf,
    /// What is in it.
    pub manifest: Manifest,
    /// Found in the cache rather than built.
    pub cached: bool,
}

/// Where and with what to build.
#[derive(Debug, Clone, Default)]
pub struct SpecBuildOptions {
    /// Cache directory (default: [`cache::default_dir`]).
    pub cache_dir: Option<PathBuf>,
    /// A prebuilt static agent (default: `$ZEROBOOT_AGENT`, else built).
    pub agent: Option<PathBuf>,
    /// Start no program: only an image already in the cache, with a given
    /// agent, can be had ([`ImageError::ProgramsRefused`] otherwise). A
    /// worker under its seccomp filter, which can start none, sets it.
    pub no_programs: bool,
}

/// Guest memory an image of `bytes` needs: the initramfs and its unpacked
/// copy live in RAM together while the kernel unpacks it, plus the kernel
/// and the running system.
pub fn memory_needed_mib(initramfs_bytes: u64) -> u64 {
    (2 * initramfs_bytes).div_ceil(1 << 20) + 128
}

/// Removes a directory when dropped (success or failure alike).
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove a build directory");
        }
    }
}

fn fresh(dir: &Path) -> Result<(), ImageError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(ImageError::io("cannot remove", dir))?;
    }
    fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))
}

/// Mixes the sizes and times of every file under `path` into `digest`
/// (bounded: a huge tree costs a walk, never memory).
fn mix_host_tree(mut digest: Fingerprint, path: &Path) -> Result<Fingerprint, ImageError> {
    use std::os::unix::fs::MetadataExt;
    let meta = fs::symlink_metadata(path).map_err(|_| ImageError::Missing {
        what: "host file",
        path: path.to_owned(),
    })?;
    digest = digest
        .mix(path.as_os_str().as_encoded_bytes())
        .mix(&meta.size().to_le_bytes())
        .mix(&meta.mtime().to_le_bytes())
        .mix(&meta.mtime_nsec().to_le_bytes())
        .mix(&meta.mode().to_le_bytes());
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = fs::read_dir(path)
            .map_err(ImageError::io("cannot list", path))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(ImageError::io("cannot list", path))?;
        entries.sort();
        for e in entries {
            digest = mix_host_tree(digest, &e)?;
        }
    }
    Ok(digest)
}

/// The cache key of `spec`'s image.
fn digest(spec: &Spec, agent: &[u8]) -> Result<String, ImageError> {
    let mut image_part = spec.clone();
    image_part.warmup.clear();
    image_part.memory_mib = None;
    image_part.network = Default::default();
    let mut d = python::fingerprint(Fingerprint::default())
        .mix(LAYOUT_VERSION)
        .mix(image_part.to_json().to_string().as_bytes())
        .mix(agent);
    if let Base::Oci(p) = &spec.base {
        d = mix_host_tree(d, p)?;
    }
    for f in &spec.files {
        d = mix_host_tree(d, &f.from)?;
    }
    if let Some(dir) = &spec.python.find_links {
        d = mix_host_tree(d, dir)?;
    }
    Ok(d.hex())
}

/// Builds `spec`'s image, or finds it in the cache; through the build
/// helper when this process started one ([`super::helper`]: a worker under
/// its seccomp filter, which can start no program).
pub fn build(
    spec: &Spec,
    opts: &SpecBuildOptions,
    progress: Reporter<'_>,
) -> Result<SpecImage, ImageError> {
    match super::helper::running() {
        Some(helper) => helper.build(spec, opts, progress),
        None => build_here(spec, opts, progress),
    }
}

/// [`build`] in this process.
pub fn build_here(
    spec: &Spec,
    opts: &SpecBuildOptions,
    progress: Reporter<'_>,
) -> Result<SpecImage, ImageError> {
    let cache = match &opts.cache_dir {
        Some(dir) => dir.clone(),
        None => cache::default_dir()?,
    };
    let _lock = cache::lock(&cache)?;
    if opts.no_programs && opts.agent.is_none() && agent::from_env().is_none() {
        return Err(ImageError::ProgramsRefused {
            step: "building the agent",
        });
    }
    let agent = agent::locate(opts.agent.as_deref())?;
    let agent_bytes = fs::read(&agent).map_err(ImageError::io("cannot read", &agent))?;
    // Host files are checked before anything is fetched.
    for f in &spec.files {
        if fs::symlink_metadata(&f.from).is_err() {
            return Err(ImageError::Missing {
                what: "host file",
                path: f.from.clone(),
            });
        }
    }
    let key = digest(spec, &agent_bytes)?;
    let done = cache.join("spec").join(&key);
    if let Some(found) = cached(&cache, &done)? {
        return Ok(found);
    }
    if opts.no_programs {
        return Err(ImageError::ProgramsRefused {
            step: "building the image",
        });
    }
    progress(&Progress::step(Phase::Resolve, "Debian packages"));
    let debian = Debian::open(&cache.join("debian"))?;
    let kernel = kernel::fetch(&debian, &cache, progress)?;
    let work = WorkDir(cache.join("spec").join(format!("{key}.work")));
    fresh(&work.0)?;
    let modules = kernel::packed_modules(&kernel)?;
    let manifest = assemble(spec, &debian, &cache, &work.0, &agent, &modules, progress)?;
    let needed = memory_needed_mib(manifest.initramfs_bytes);
    if needed > u64::from(spec.memory_mib()) {
        return Err(ImageError::ImageTooLarge {
            image_mib: manifest.initramfs_bytes.div_ceil(1 << 20),
            memory_mib: spec.memory_mib(),
            needed_mib: needed,
        });
    }
    let out = work.0.join("out");
    let text = serde_json::to_vec_pretty(&manifest).expect("a manifest serialises");
    fs::write(out.join("manifest.json"), text)
        .map_err(ImageError::io("cannot write", out.join("manifest.json")))?;
    fs::write(out.join("kernel"), kernel.as_os_str().as_encoded_bytes())
        .map_err(ImageError::io("cannot write", out.join("kernel")))?;
    if done.exists() {
        fs::remove_dir_all(&done).map_err(ImageError::io("cannot remove", &done))?;
    }
    fs::rename(&out, &done).map_err(ImageError::io("cannot move the image to", &done))?;
    match cached(&cache, &done)? {
        Some(found) => Ok(SpecImage {
            cached: false,
            ..found
        }),
        None => Err(ImageError::Missing {
            what: "built image",
            path: done,
        }),
    }
}

/// A finished image in `dir`, if there is one.
fn cached(cache: &Path, dir: &Path) -> Result<Option<SpecImage>, ImageError> {
    let (initramfs, manifest, kernel) = (
        dir.join("initramfs.cpio"),
        dir.join("manifest.json"),
        dir.join("kernel"),
    );
    if !(initramfs.is_file() && manifest.is_file() && kernel.is_file()) {
        return Ok(None);
    }
    let text = fs::read(&manifest).map_err(ImageError::io("cannot read", &manifest))?;
    let Ok(manifest) = serde_json::from_slice::<Manifest>(&text) else {
        return Ok(None); // an older layout: rebuild
    };
    let kernel_path = PathBuf::from(
        String::from_utf8(fs::read(&kernel).map_err(ImageError::io("cannot read", &kernel))?)
            .unwrap_or_default(),
    );
    if !kernel_path.starts_with(cache) || !kernel_path.is_file() {
        return Ok(None);
    }
    Ok(Some(SpecImage {
        kernel: kernel_path,
        initramfs,
        manifest,
        cached: true,
    }))
}

/// Resolves, downloads and assembles under `work`; leaves the initramfs
/// in `work/out/`.
fn assemble(
    spec: &Spec,
    debian: &Debian,
    cache: &Path,
    work: &Path,
    agent: &Path,
    modules: &[(String, Vec<u8>)],
    progress: Reporter<'_>,
) -> Result<Manifest, ImageError> {
    let python_base = spec.base == Base::Python;
    let mut wanted: Vec<String> = Vec::new();
    if python_base {
        wanted.extend(python::PACKAGES.map(String::from));
        wanted.push(BUSYBOX.into());
        if !spec.python.packages.is_empty() {
            wanted.extend(WHEEL_SYSTEM_LIBS.map(String::from));
        }
    }
    wanted.extend(spec.debian.packages.iter().cloned());
    let all = debian.closure(&wanted)?;
    let users = debian.closure(&spec.debian.packages)?;
    let debs = debian.fetch(&all, progress)?;
    progress(&Progress::step(Phase::Assemble, "root filesystem"));
    let sysroot = work.join("sysroot");
    for deb in &debs {
        Debian::extract(&deb.path, &sysroot)?;
    }
    let mut owners = Owners::new();
    let root = if python_base {
        let profile = match spec.python.stdlib() {
            Stdlib::Minimal => Profile::Minimal,
            Stdlib::Full => Profile::Full,
        };
        let py: Vec<PathBuf> = debs
            .iter()
            .filter(|d| python::PACKAGES.contains(&d.package.name.as_str()))
            .map(|d| d.path.clone())
            .collect();
        let root = python::stage(&py, &sysroot, profile, work)?;
        install_busybox(&sysroot, &root)?;
        root
    } else {
        let root = work.join("root");
        fresh(&root)?;
        root
    };
    let mut oci_defaults = oci::OciDefaults::default();
    if let Base::Oci(image) = &spec.base {
        let img = oci::open(image, work)?;
        oci::apply(image, &img, &root, &mut owners)?;
        oci_defaults = img.defaults;
    }
    install_debs(&debs, &users, &root, python_base)?;
    let mut installed = Vec::new();
    if !spec.python.packages.is_empty() {
        progress(&Progress::step(Phase::Resolve, "Python packages (uv)"));
        let site = root.join(wheels::SITE);
        installed = wheels::install(
            &spec.python,
            &site,
            &root.join("usr/local/bin"),
            &cache.join("uv"),
        )?;
        progress(&Progress::step(Phase::Assemble, "Python packages"));
        let elves = elf_files(&site)?;
        let needed = libs::closure(&sysroot, &elves)?;
        libs::install(&needed, &sysroot, &root)?;
        if let Err(e) = python::compile(&root, &site) {
            // A file that does not compile is compiled at import instead.
            tracing::warn!(error = %e, "some Python packages' files did not precompile");
        }
    }
    kernel::install_modules(modules, &root)?;
    copy_files(spec, &root)?;
    if NODE_PATHS
        .iter()
        .any(|p| fs::symlink_metadata(root.join(p)).is_ok())
    {
        // Without it a JavaScript worker started before the snapshot shares
        // OpenSSL's generator, so crypto and Math.random, with every fork.
        progress(&Progress::step(
            Phase::Assemble,
            "the Node.js reseed module",
        ));
        install_node_addon(&agent::locate_node_addon()?, &root)?;
    }
    let user = user_ids(spec, &oci_defaults, &root, &mut owners)?;
    write_agent_conf(spec, &oci_defaults, user, &root, &mut owners)?;
    let out = work.join("out");
    fs::create_dir_all(&out).map_err(ImageError::io("cannot create", &out))?;
    let initramfs = out.join("initramfs.cpio");
    initramfs::write(agent, &root, &owners, &initramfs)?;
    let initramfs_bytes = fs::metadata(&initramfs)
        .map_err(ImageError::io("cannot stat", &initramfs))?
        .len();
    Ok(Manifest {
        base: match &spec.base {
            Base::Python => "python".into(),
            Base::Oci(p) => format!("oci:{}", p.display()),
        },
        python: installed,
        debian: users,
        preload: spec.python.preload.clone(),
        initramfs_bytes,
        spec: spec.to_json(),
    })
}

/// `/bin/busybox` and a link for each of its applets that the root lacks.
fn install_busybox(sysroot: &Path, root: &Path) -> Result<(), ImageError> {
    let src = sysroot.join("bin/busybox");
    let dest = root.join("bin/busybox");
    fs::create_dir_all(root.join("bin")).map_err(ImageError::io("cannot create", root))?;
    fs::copy(&src, &dest).map_err(ImageError::io("cannot copy", &src))?;
    // Static: it runs on the host too, and lists its own applets.
    let out = super::command::run(std::process::Command::new(&dest).arg("--list-full"))?;
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet.contains("..") {
            continue;
        }
        let link = root.join(applet);
        if fs::symlink_metadata(&link).is_ok() {
            continue;
        }
        if let Some(dir) = link.parent() {
            fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
        }
        std::os::unix::fs::symlink("/bin/busybox", &link)
            .map_err(ImageError::io("cannot link", &link))?;
    }
    Ok(())
}

/// Unpacks the closure of the user's Debian packages into the root, whole
/// (a package's data files matter as much as its libraries: nodejs loads
/// Debian's own JavaScript modules); in the python base without Debian's
/// documentation.
fn install_debs(
    debs: &[Deb],
    users: &[Package],
    root: &Path,
    prune: bool,
) -> Result<(), ImageError> {
    for deb in debs.iter().filter(|d| users.contains(&d.package)) {
        Debian::extract(&deb.path, root)?;
    }
    if prune && !users.is_empty() {
        for dir in PRUNE {
            let p = root.join(dir);
            if p.is_dir() {
                fs::remove_dir_all(&p).map_err(ImageError::io("cannot remove", &p))?;
            }
        }
    }
    Ok(())
}

/// Every ELF file under `dir` (not following symlinks).
fn elf_files(dir: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(ImageError::io("cannot list", &d))?;
            let kind = entry
                .file_type()
                .map_err(ImageError::io("cannot stat", &d))?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() && libs::is_elf(&entry.path()) {
                out.push(entry.path());
            }
        }
    }
    out.sort();
    Ok(out)
}

/// A guest path in the root, resolved inside it.
fn guest(root: &Path, path: &str) -> Result<PathBuf, ImageError> {
    scoped::resolve(root, Path::new(path), true).map_err(|e| ImageError::Io {
        action: "cannot resolve",
        path: path.into(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Copies `files` into the root.
fn copy_files(spec: &Spec, root: &Path) -> Result<(), ImageError> {
    for f in &spec.files {
        let dest = guest(root, &f.to)?;
        copy_tree(&f.from, &dest, f.mode_bits())?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, mode: Option<u32>) -> Result<(), ImageError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = fs::symlink_metadata(from).map_err(|_| ImageError::Missing {
        what: "host file",
        path: from.to_owned(),
    })?;
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
    }
    if meta.is_dir() {
        fs::create_dir_all(to).map_err(ImageError::io("cannot create", to))?;
        for entry in fs::read_dir(from).map_err(ImageError::io("cannot list", from))? {
            let entry = entry.map_err(ImageError::io("cannot list", from))?;
            copy_tree(&entry.path(), &to.join(entry.file_name()), mode)?;
        }
    } else if meta.file_type().is_symlink() {
        let target = fs::read_link(from).map_err(ImageError::io("cannot read link", from))?;
        let _ = fs::remove_file(to);
        std::os::unix::fs::symlink(target, to).map_err(ImageError::io("cannot link", to))?;
    } else if meta.is_file() {
        let _ = fs::remove_file(to);
        fs::copy(from, to).map_err(ImageError::io("cannot copy", from))?;
        let bits = mode.unwrap_or(meta.permissions().mode() & 0o7777);
        fs::set_permissions(to, fs::Permissions::from_mode(bits))
            .map_err(ImageError::io("cannot chmod", to))?;
    }
    Ok(())
}

/// The (uid, gid, home) execs run as, if not root. A name is looked up in
/// the root's `/etc/passwd`; the python base creates it when missing.
fn user_ids(
    spec: &Spec,
    oci: &oci::OciDefaults,
    root: &Path,
    owners: &mut Owners,
) -> Result<Option<(u32, u32, String)>, ImageError> {
    let Some(user) = spec.user.as_deref().or(oci.user.as_deref()) else {
        return Ok(None);
    };
    let passwd_path = guest(root, "/etc/passwd")?;
    let passwd = fs::read_to_string(&passwd_path).unwrap_or_default();
    let lookup = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 6 && f[0] == name).then(|| {
                (
                    f[2].parse::<u32>().ok(),
                    f[3].parse::<u32>().ok(),
                    f[5].to_owned(),
                )
            })
        })
    };
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, gid, home) = match (name.parse::<u32>(), lookup(name)) {
        (Ok(uid), _) => (
            uid,
            group.and_then(|g| g.parse().ok()).unwrap_or(uid),
            "/".to_owned(),
        ),
        (Err(_), Some((Some(uid), Some(gid), home))) => (uid, gid, home),
        (Err(_), _) if spec.base == Base::Python => {
            create_user(root, name, &passwd, owners)?;
            (FIRST_UID, FIRST_UID, format!("/home/{name}"))
        }
        (Err(_), _) => {
            return Err(ImageError::UnknownUser {
                user: user.to_owned(),
            });
        }
    };
    if uid == 0 {
        return Ok(None);
    }
    Ok(Some((uid, gid, home)))
}

/// Adds `name` (uid and gid [`FIRST_UID`]) with a home to the python base.
fn create_user(
    root: &Path,
    name: &str,
    passwd: &str,
    owners: &mut Owners,
) -> Result<(), ImageError> {
    let etc = root.join("etc");
    fs::create_dir_all(&etc).map_err(ImageError::io("cannot create", &etc))?;
    let mut passwd = if passwd.is_empty() {
        "root:x:0:0:root:/root:/bin/sh\n".to_owned()
    } else {
        passwd.to_owned()
    };
    passwd.push_str(&format!(
        "{name}:x:{FIRST_UID}:{FIRST_UID}::/home/{name}:/bin/sh\n"
    ));
    let group_path = etc.join("group");
    let mut group = fs::read_to_string(&group_path).unwrap_or_else(|_| "root:x:0:\n".to_owned());
    group.push_str(&format!("{name}:x:{FIRST_UID}:\n"));
    fs::write(etc.join("passwd"), passwd).map_err(ImageError::io("cannot write", &etc))?;
    fs::write(&group_path, group).map_err(ImageError::io("cannot write", &group_path))?;
    let home = root.join("home").join(name);
    fs::create_dir_all(&home).map_err(ImageError::io("cannot create", &home))?;
    owners.insert(PathBuf::from("home").join(name), (FIRST_UID, FIRST_UID));
    Ok(())
}

/// Copies the Node.js reseed module to where the agent looks for it.
fn install_node_addon(addon: &Path, root: &Path) -> Result<(), ImageError> {
    let to = root.join(NODE_ADDON);
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
    }
    fs::copy(addon, &to).map_err(ImageError::io("cannot copy", addon))?;
    Ok(())
}

/// `/etc/zeroboot/agent.conf` (see the agent's `template.rs`).
fn write_agent_conf(
    spec: &Spec,
    oci: &oci::OciDefaults,
    user: Option<(u32, u32, String)>,
    root: &Path,
    owners: &mut Owners,
) -> Result<(), ImageError> {
    let python = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .into_iter()
        .find(|p| guest(root, p).is_ok_and(|r| r.is_file()));
    if python.is_none() && !spec.python.preload.is_empty() {
        return Err(ImageError::NoPython);
    }
    let mut conf = String::from("# Written by zeroboot from the template spec.\n");
    conf.push_str(&format!("python {}\n", python.unwrap_or("none")));
    for m in &spec.python.preload {
        conf.push_str(&format!("preload {m}\n"));
    }
    let mut env: Vec<(String, String)> = oci.env.clone();
    if let Some((_, _, home)) = &user
        && !spec.env.contains_key("HOME")
    {
        env.push(("HOME".into(), home.clone()));
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in &env {
        // Only an image's config can hold these (the spec's are validated).
        if let (Base::Oci(image), true) = (
            &spec.base,
            k.contains(['=', '\n', '\0']) || v.contains(['\n', '\0']),
        ) {
            return Err(ImageError::OciInvalid {
                path: image.clone(),
                detail: format!("environment variable {k:?} cannot be passed on"),
            });
        }
        conf.push_str(&format!("env {k}={v}\n"));
    }
    if let Some(cwd) = spec.cwd.as_ref().or(oci.working_dir.as_ref()) {
        conf.push_str(&format!("cwd {cwd}\n"));
        let dir = guest(root, cwd)?;
        if !dir.is_dir() {
            fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
            if let Some((uid, gid, _)) = &user {
                let rel = dir.strip_prefix(root).unwrap_or(&dir).to_owned();
                owners.insert(rel, (*uid, *gid));
            }
        }
    }
    if let Some((uid, gid, _)) = user {
        conf.push_str(&format!("user {uid} {gid}\n"));
    }
    let path = root.join("etc/zeroboot/agent.conf");
    fs::create_dir_all(root.join("etc/zeroboot"))
        .map_err(ImageError::io("cannot create", &path))?;
    fs::write(&path, conf).map_err(ImageError::io("cannot write", &path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_that_may_start_no_program_gets_only_cached_images() {
        let cache = std::env::temp_dir().join(format!("zb-noprog-{}", std::process::id()));
        let opts = SpecBuildOptions {
            cache_dir: Some(cache.clone()),
            agent: None,
            no_programs: true,
        };
        let r = build(&Spec::default(), &opts, &mut |_| {});
        let _ = fs::remove_dir_all(&cache);
        // Without an agent it stops before building one; with
        // $ZEROBOOT_AGENT set, before building the image (the cache is empty).
        assert!(
            matches!(r, Err(ImageError::ProgramsRefused { .. })),
            "{:?}",
            r.map(|i| i.cached)
        );
    }
}
