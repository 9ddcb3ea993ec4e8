//! Debian bookworm packages, whatever the host's distribution: the host's
//! `apt-get` run entirely on zeroboot's own configuration, never the host's.
//!
//! `APT_CONFIG` names a file this module writes into the cache; apt reads it
//! *before* anything else, and it points every directory apt uses (sources,
//! configuration parts, trusted keys, package lists, the dpkg status, the
//! archive cache) into the cache. So the host's sources list, its
//! `apt.conf.d`, its keyrings and its package database are never read, and
//! an Ubuntu (or any other apt-based) host gets exactly what a Debian 12 host
//! gets. The archive keys are shipped in this directory (Debian's bookworm
//! automatic, security-automatic and stable release keys, fingerprints
//! B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8, 05AB90340C0C5E797F44A8C8254CF3B5AEC0A8F0,
//! 4D64FEC119C2029067D6E791F8D2585B8783D481); apt checks every index
//! against them and every `.deb` against the index's hash.
//!
//! - **Closure**: `apt-get -s install` against an *empty* dpkg status lists
//!   every package the request needs (Depends and Pre-Depends, no
//!   Recommends), with the exact versions: apt's own resolver.
//! - **Download**: `apt-get download name=version`, into `debs/`, which is
//!   also the cache (a file already there with the size the index gives is
//!   not fetched again).
//! - **Lists** are fetched (`apt-get update`) when missing, and again once
//!   when a resolution or download fails on stale ones.
//!
//! Maintainer scripts are never run: packages are unpacked with
//! `dpkg-deb -x`, as for the kernel and Python before.

use super::progress::{Phase, Progress, Reporter};
use super::{ImageError, command};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The archive's keys (see the module docs).
const KEYS: [(&str, &str); 3] = [
    (
        "debian-archive-bookworm-automatic.asc",
        include_str!("debian-archive-bookworm-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-security-automatic.asc",
        include_str!("debian-archive-bookworm-security-automatic.asc"),
    ),
    (
        "debian-archive-bookworm-stable.asc",
        include_str!("debian-archive-bookworm-stable.asc"),
    ),
];
/// The archive, unless `ZEROBOOT_DEBIAN_MIRROR` names another.
const MIRROR: &str = "http://deb.debian.org/debian";
/// The security archive, unless `ZEROBOOT_DEBIAN_SECURITY_MIRROR` names another.
const SECURITY_MIRROR: &str = "http://deb.debian.org/debian-security";

/// One package at one version.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct Package {
    /// Its name.
    pub name: String,
    /// The exact version apt chose.
    pub version: String,
}

/// A downloaded package.
#[derive(Debug, Clone)]
pub struct Deb {
    /// Which package.
    pub package: Package,
    /// The `.deb` in the cache.
    pub path: PathBuf,
}

/// zeroboot's own apt: configuration, lists and downloads under one directory.
pub struct Debian {
    root: PathBuf,
    config: PathBuf,
    debs: PathBuf,
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// The `Inst NAME (VERSION ...)` lines of a simulated install.
fn parse_simulation(out: &str) -> Vec<Package> {
    out.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("Inst ")?;
            let (name, rest) = rest.split_once(' ')?;
            // An upgrade would show "[old] (new ...)"; the status is empty.
            let version = rest.split_once('(')?.1.split_whitespace().next()?;
            Some(Package {
                name: name.to_owned(),
                version: version.to_owned(),
            })
        })
        .collect()
}

/// What `--print-uris` says of one download: file name and size.
fn parse_uris(out: &str) -> Vec<(String, u64)> {
    out.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let _url = words.next()?.strip_prefix('\'')?;
            let file = words.next()?;
            let size = words.next()?.parse().ok()?;
            Some((file.to_owned(), size))
        })
        .collect()
}

/// How the `.deb` file of `p` is named (apt writes an epoch's `:` as `%3a`).
fn deb_prefix(p: &Package) -> String {
    format!("{}_{}_", p.name, p.version.replace(':', "%3a"))
}

/// The fields of one RFC 822 stanza (`apt-cache show`), first stanza only.
pub fn stanza_fields(text: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let mut last: Option<String> = None;
    for line in text.lines() {
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some(v) = last.as_ref().and_then(|k| fields.get_mut(k)) {
                let v: &mut String = v;
                v.push('\n');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            fields.insert(k.to_owned(), v.trim().to_owned());
            last = Some(k.to_owned());
        }
    }
    fields
}

impl Debian {
    /// Writes the configuration under `dir` (the cache's `debian/`) and
    /// checks that the host has apt-get and dpkg-deb.
    pub fn open(dir: &Path) -> Result<Debian, ImageError> {
        if !command::exists("apt-get") || !command::exists("dpkg-deb") {
            return Err(ImageError::NoApt);
        }
        let mk = |p: &Path| fs::create_dir_all(p).map_err(ImageError::io("cannot create", p));
        let write = |p: &Path, text: &str| {
            // Unchanged files keep their times: apt compares nothing, but
            // concurrent readers never see a half-written file.
            if fs::read_to_string(p).is_ok_and(|old| old == text) {
                return Ok(());
            }
            let tmp = p.with_extension("tmp");
            fs::write(&tmp, text).map_err(ImageError::io("cannot write", &tmp))?;
            fs::rename(&tmp, p).map_err(ImageError::io("cannot write", p))
        };
        let root = dir.to_owned();
        let (etc, keys, state, cache, debs) = (
            root.join("etc"),
            root.join("keys"),
            root.join("state"),
            root.join("cache"),
            root.join("debs"),
        );
        for d in [
            &etc.join("apt.conf.d"),
            &etc.join("sources.list.d"),
            &etc.join("preferences.d"),
            &keys,
            &state.join("lists/partial"),
            &cache.join("archives/partial"),
            &debs,
        ] {
            mk(d)?;
        }
        for (name, text) in KEYS {
            write(&keys.join(name), text)?;
        }
        let status = state.join("status");
        write(&status, "")?;
        let (mirror, security) = (
            env_or("ZEROBOOT_DEBIAN_MIRROR", MIRROR),
            env_or("ZEROBOOT_DEBIAN_SECURITY_MIRROR", SECURITY_MIRROR),
        );
        write(
            &etc.join("sources.list"),
            &format!(
                "deb {mirror} bookworm main\n\
                 deb {mirror} bookworm-updates main\n\
                 deb {security} bookworm-security main\n"
            ),
        )?;
        let q = |p: &Path| format!("\"{}\"", p.display());
        let conf = format!(
            "// Written by zeroboot (src/image/debian): Debian bookworm, never the host's sources.\n\
             Dir::Etc {etc};\n\
             Dir::Etc::main \"/dev/null\";\n\
             Dir::Etc::parts {parts};\n\
             Dir::Etc::sourcelist {sources};\n\
             Dir::Etc::sourceparts {sourceparts};\n\
             Dir::Etc::preferences \"/dev/null\";\n\
             Dir::Etc::preferencesparts {prefparts};\n\
             Dir::Etc::trusted \"/dev/null\";\n\
             Dir::Etc::trustedparts {keys};\n\
             Dir::State {state};\n\
             Dir::State::status {status};\n\
             Dir::Cache {cache};\n\
             Dir::Log {log};\n\
             APT::Architecture \"amd64\";\n\
             APT::Architectures {{ \"amd64\"; }};\n\
             APT::Install-Recommends \"false\";\n\
             APT::Install-Suggests \"false\";\n\
             APT::Get::Assume-Yes \"true\";\n\
             Acquire::Languages \"none\";\n\
             Acquire::Retries \"3\";\n",
            etc = q(&etc),
            parts = q(&etc.join("apt.conf.d")),
            sources = q(&etc.join("sources.list")),
            sourceparts = q(&etc.join("sources.list.d")),
            prefparts = q(&etc.join("preferences.d")),
            keys = q(&keys),
            state = q(&state),
            status = q(&status),
            cache = q(&cache),
            log = q(&root.join("log")),
        );
        let config = etc.join("apt.conf");
        write(&config, &conf)?;
        Ok(Debian { root, config, debs })
    }

    /// Where downloads are kept.
    pub fn debs(&self) -> &Path {
        &self.debs
    }

    /// An apt command on this configuration only.
    fn apt(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("APT_CONFIG", &self.config)
            .env("LC_ALL", "C")
            .env("DEBIAN_FRONTEND", "noninteractive");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // apt's download sandbox user could not write into root's cache.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd
    }

    fn lists_present(&self) -> bool {
        fs::read_dir(self.root.join("state/lists")).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().ends_with("_Packages"))
        })
    }

    /// Fetches the package lists.
    pub fn update(&self) -> Result<(), ImageError> {
        eprintln!("zeroboot image: fetching Debian bookworm's package lists");
        let mut cmd = self.apt("apt-get");
        cmd.args(["-q", "update"]);
        command::run(&mut cmd).map(drop).map_err(|e| match e {
            ImageError::Command { detail, .. } => ImageError::DebianUpdate { detail },
            other => other,
        })
    }

    /// Runs `f`, fetching the lists first when missing, and once more after
    /// a failure (stale lists name versions the archive no longer has).
    fn with_lists<T>(&self, mut f: impl FnMut() -> Result<T, ImageError>) -> Result<T, ImageError> {
        let fresh = !self.lists_present();
        if fresh {
            self.update()?;
        }
        match f() {
            Err(_) if !fresh => {
                self.update()?;
                f()
            }
            other => other,
        }
    }

    /// Every package `packages` need, each at the version apt chose
    /// (`name=version` pins are honoured).
    pub fn closure(&self, packages: &[String]) -> Result<Vec<Package>, ImageError> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        self.with_lists(|| {
            let mut cmd = self.apt("apt-get");
            cmd.args(["-q", "-s", "install", "--"]).args(packages);
            let out = command::run(&mut cmd).map_err(|e| match e {
                ImageError::Command { detail, .. } => ImageError::DebianUnresolvable {
                    packages: packages.join(" "),
                    detail,
                },
                other => other,
            })?;
            let mut found = parse_simulation(&String::from_utf8_lossy(&out.stdout));
            found.sort();
            Ok(found)
        })
    }

    /// One package's fields at its candidate version (no closure).
    pub fn show(&self, package: &str) -> Result<BTreeMap<String, String>, ImageError> {
        self.with_lists(|| {
            let mut cmd = self.apt("apt-cache");
            cmd.args(["show", "--no-all-versions", "--", package]);
            let out = command::run(&mut cmd).map_err(|e| match e {
                ImageError::Command { detail, .. } => ImageError::DebianUnresolvable {
                    packages: package.to_owned(),
                    detail,
                },
                other => other,
            })?;
            Ok(stanza_fields(&String::from_utf8_lossy(&out.stdout)))
        })
    }

    /// The `.deb` of each package, downloading what the cache lacks;
    /// `progress` sees the bytes as they arrive.
    pub fn fetch(
        &self,
        packages: &[Package],
        progress: Reporter<'_>,
    ) -> Result<Vec<Deb>, ImageError> {
        if packages.is_empty() {
            return Ok(Vec::new());
        }
        let pins: Vec<String> = packages
            .iter()
            .map(|p| format!("{}={}", p.name, p.version))
            .collect();
        let uris = self.with_lists(|| {
            let mut cmd = self.apt("apt-get");
            cmd.args(["-q", "download", "--print-uris", "--"])
                .args(&pins);
            let out = command::run(&mut cmd).map_err(|e| match e {
                ImageError::Command { detail, .. } => ImageError::DebianDownload { detail },
                other => other,
            })?;
            // apt lists them in its own order: match them by file name.
            let listed = parse_uris(&String::from_utf8_lossy(&out.stdout));
            packages
                .iter()
                .map(|p| {
                    let prefix = deb_prefix(p);
                    listed
                        .iter()
                        .find(|(file, _)| file.starts_with(&prefix))
                        .cloned()
                        .ok_or_else(|| ImageError::DebianDownload {
                            detail: format!("apt names no file for {}={}", p.name, p.version),
                        })
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        let have = |file: &str, size: u64| {
            fs::metadata(self.debs.join(file)).is_ok_and(|m| m.is_file() && m.len() == size)
        };
        let missing: Vec<usize> = (0..uris.len())
            .filter(|&i| !have(&uris[i].0, uris[i].1))
            .collect();
        let total: u64 = missing.iter().map(|&i| uris[i].1).sum();
        if !missing.is_empty() {
            eprintln!(
                "zeroboot image: downloading {} Debian packages ({:.1} MB)",
                missing.len(),
                total as f64 / 1e6
            );
            let wanted: Vec<&str> = missing.iter().map(|&i| pins[i].as_str()).collect();
            self.download(&wanted, &uris, total, progress)?;
        }
        packages
            .iter()
            .zip(uris)
            .map(|(p, (file, size))| {
                if have(&file, size) {
                    Ok(Deb {
                        package: p.clone(),
                        path: self.debs.join(file),
                    })
                } else {
                    Err(ImageError::DebianDownload {
                        detail: format!("{} was not downloaded", p.name),
                    })
                }
            })
            .collect()
    }

    /// Runs `apt-get download` for `pins`, reporting the bytes on disk.
    fn download(
        &self,
        pins: &[&str],
        uris: &[(String, u64)],
        total: u64,
        progress: Reporter<'_>,
    ) -> Result<(), ImageError> {
        let mut cmd = self.apt("apt-get");
        cmd.args(["-q", "download", "--"])
            .args(pins)
            .current_dir(&self.debs)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| ImageError::Command {
            command: "apt-get download".into(),
            detail: e.to_string(),
        })?;
        // The bytes of the wanted files present so far (complete or not).
        let on_disk = || -> u64 {
            uris.iter()
                .map(|(f, size)| fs::metadata(self.debs.join(f)).map_or(0, |m| m.len().min(*size)))
                .sum()
        };
        let before = on_disk();
        let status = loop {
            if let Some(status) = child
                .try_wait()
                .map_err(ImageError::io("cannot wait for", "apt-get"))?
            {
                break status;
            }
            progress(&Progress {
                phase: Phase::Download,
                done: on_disk().saturating_sub(before).min(total),
                total: Some(total),
                message: "Debian packages".into(),
            });
            std::thread::sleep(Duration::from_millis(200));
        };
        progress(&Progress {
            phase: Phase::Download,
            done: on_disk().saturating_sub(before).min(total),
            total: Some(total),
            message: "Debian packages".into(),
        });
        if status.success() {
            return Ok(());
        }
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            // Bounded: apt's complaint is a few lines.
            let _ = (&mut e).take(64 << 10).read_to_string(&mut stderr);
        }
        Err(ImageError::DebianDownload {
            detail: format!("{status}: {}", stderr.trim()),
        })
    }

    /// Unpacks `deb`'s files under `dest` (maintainer scripts are not run).
    pub fn extract(deb: &Path, dest: &Path) -> Result<(), ImageError> {
        fs::create_dir_all(dest).map_err(ImageError::io("cannot create", dest))?;
        command::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(drop)
    }
}

#[cfg(test)]
mod tests;
