//! Fetching Debian packages without installing them: `apt-get download` into
//! the cache, `dpkg-deb -x` into a staging directory. Nothing touches the
//! host's package database or `/boot`.

use super::{ImageError, command};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The host's apt, downloading into one directory.
pub struct Apt {
    debs: PathBuf,
}

/// The newest `.deb` of `package` among `names` (file names of the cache),
/// by the order of `key` (modification time in practice).
fn pick_deb<'a, K: Ord>(
    package: &str,
    names: impl Iterator<Item = (&'a str, K)>,
) -> Option<&'a str> {
    let prefix = format!("{package}_");
    names
        .filter(|(n, _)| n.starts_with(&prefix) && n.ends_with(".deb"))
        .max_by(|a, b| a.1.cmp(&b.1))
        .map(|(n, _)| n)
}

impl Apt {
    /// Checks that apt-get and dpkg-deb exist; downloads go to `debs`.
    pub fn new(debs: &Path) -> Result<Apt, ImageError> {
        if !command::exists("apt-get") || !command::exists("dpkg-deb") {
            return Err(ImageError::NoApt);
        }
        fs::create_dir_all(debs).map_err(ImageError::io("cannot create", debs))?;
        Ok(Apt {
            debs: debs.to_owned(),
        })
    }

    fn cached(&self, package: &str) -> Result<Option<PathBuf>, ImageError> {
        let entries: Vec<(String, std::time::SystemTime)> = fs::read_dir(&self.debs)
            .map_err(ImageError::io("cannot list", &self.debs))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                Some((
                    e.file_name().into_string().ok()?,
                    e.metadata().ok()?.modified().ok()?,
                ))
            })
            .collect();
        Ok(
            pick_deb(package, entries.iter().map(|(n, t)| (n.as_str(), *t)))
                .map(|n| self.debs.join(n)),
        )
    }

    fn download(&self, package: &str) -> Result<(), ImageError> {
        let mut cmd = Command::new("apt-get");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // apt's download sandbox user cannot write into root's cache.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.args(["-q", "download", package])
            .current_dir(&self.debs);
        command::run(&mut cmd).map(drop).map_err(|e| match e {
            ImageError::Command { detail, .. } => ImageError::AptDownload {
                package: package.into(),
                stderr: detail,
            },
            other => other,
        })
    }

    /// The `.deb` of `package`: from the cache, else downloaded (delete the
    /// cache directory to pick up newer versions).
    pub fn fetch(&self, package: &str) -> Result<PathBuf, ImageError> {
        if let Some(deb) = self.cached(package)? {
            return Ok(deb);
        }
        eprintln!("zeroboot image: downloading {package}");
        self.download(package)?;
        self.cached(package)?
            .ok_or_else(|| ImageError::PackageContents {
                package: package.into(),
                what: "downloaded .deb file",
            })
    }

    /// Unpacks `deb`'s files under `dest`.
    pub fn extract(deb: &Path, dest: &Path) -> Result<(), ImageError> {
        fs::create_dir_all(dest).map_err(ImageError::io("cannot create", dest))?;
        command::run(Command::new("dpkg-deb").arg("-x").arg(deb).arg(dest)).map(drop)
    }

    /// A control field of `deb` (e.g. `Depends`).
    pub fn field(deb: &Path, name: &str) -> Result<String, ImageError> {
        let out = command::run(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pick_deb_matches_the_exact_package_and_takes_the_newest() {
        let names = [
            ("python3.11-minimal_3.11.2-6_amd64.deb", 1),
            ("python3.11-minimal_3.11.2-7_amd64.deb", 2),
            ("libpython3.11-minimal_3.11.2-7_amd64.deb", 3),
            ("python3.11_3.11.2-7_amd64.deb", 4),
            ("python3.11-minimal_3.11.2-8_amd64.deb.partial", 5),
        ];
        assert_eq!(
            pick_deb("python3.11-minimal", names.iter().copied()),
            Some("python3.11-minimal_3.11.2-7_amd64.deb")
        );
        assert_eq!(
            pick_deb("python3.11", names.iter().copied()),
            Some("python3.11_3.11.2-7_amd64.deb")
        );
        assert_eq!(pick_deb("python3", names.iter().copied()), None);
    }
}
