//! The shared libraries the guest's Python needs, as `ldd` names them. The
//! guest image is built on Debian 12 from Debian 12 packages, so the host's
//! copies are the right ones.

use super::{ImageError, command};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The library paths in one `ldd` report, or the first soname it could not
/// resolve. The vDSO (no path) is skipped.
fn parse_ldd(report: &str) -> Result<Vec<PathBuf>, String> {
    let mut paths = Vec::new();
    for line in report.lines().map(str::trim) {
        let resolved = match line.split_once("=>") {
            Some((name, rest)) => {
                let rest = rest.trim();
                if rest.starts_with("not found") {
                    return Err(name.trim().to_owned());
                }
                rest
            }
            None => line,
        };
        if let Some(path) = resolved
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

/// Every library (loader included) that any of `binaries` loads.
pub fn closure(binaries: &[PathBuf]) -> Result<BTreeSet<PathBuf>, ImageError> {
    let mut libs = BTreeSet::new();
    for binary in binaries {
        let out = command::run(Command::new("ldd").arg(binary))?;
        let found = parse_ldd(&String::from_utf8_lossy(&out.stdout)).map_err(|library| {
            ImageError::MissingLibrary {
                binary: binary.clone(),
                library,
            }
        })?;
        libs.extend(found);
    }
    Ok(libs)
}

/// Copies each library to the same path under `root`, following symlinks
/// (the guest gets the file under the name the loader asks for).
pub fn install(libs: &BTreeSet<PathBuf>, root: &Path) -> Result<(), ImageError> {
    for lib in libs {
        let dest = root.join(lib.strip_prefix("/").unwrap_or(lib));
        if let Some(dir) = dest.parent() {
            std::fs::create_dir_all(dir).map_err(ImageError::io("cannot create", dir))?;
        }
        std::fs::copy(lib, &dest).map_err(ImageError::io("cannot copy library", lib))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "\tlinux-vdso.so.1 (0x00007ffd)\n\
        \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f12)\n\
        \tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x00007f13)\n\
        \t/lib64/ld-linux-x86-64.so.2 (0x00007f14)\n";

    #[test]
    fn ldd_report_yields_paths_and_the_loader() {
        let paths = parse_ldd(REPORT).unwrap();
        assert_eq!(
            paths,
            [
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn unresolved_library_is_named_and_static_binaries_need_nothing() {
        let report =
            "\tlibmpdec.so.3 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x1)\n";
        assert_eq!(parse_ldd(report), Err("libmpdec.so.3".to_owned()));
        assert_eq!(parse_ldd("\tstatically linked\n"), Ok(vec![]));
    }
}
