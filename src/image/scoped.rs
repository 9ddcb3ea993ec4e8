//! Paths inside a staged root filesystem, resolved the way the guest will
//! see them: symlinks are followed, but an absolute target means the
//! *root's* `/`, and `..` stops at the root. Nothing resolved here can name
//! a host file outside the root, whatever symlinks a package, a wheel or an
//! OCI layer put in it (Docker's `FollowSymlinkInScope` rule).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};

/// Most symlinks one resolution follows (Linux's own limit).
const MAX_HOPS: usize = 40;

/// Why a path could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    /// Too many symlinks: a loop.
    #[error("{0}: too many levels of symbolic links")]
    Loop(PathBuf),
    /// A symlink could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The link.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Resolves `path` (absolute in the guest's sense, or relative to the root)
/// to a host path under `root`. With `follow_last` false a symlink in the
/// last component is not followed (the entry itself is meant: replacing or
/// removing it). Components that do not exist yet are kept as they are.
pub fn resolve(root: &Path, path: &Path, follow_last: bool) -> Result<PathBuf, ScopeError> {
    let mut todo: VecDeque<OsString> = normal_parts(path).collect();
    let mut done: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(part) = todo.pop_front() {
        if part == ".." {
            done.pop();
            continue;
        }
        let here: PathBuf = root.join(done.iter().collect::<PathBuf>()).join(&part);
        let last = todo.is_empty();
        match std::fs::symlink_metadata(&here) {
            Ok(m) if m.file_type().is_symlink() && (follow_last || !last) => {
                hops += 1;
                if hops > MAX_HOPS {
                    return Err(ScopeError::Loop(path.to_owned()));
                }
                let target = std::fs::read_link(&here).map_err(|source| ScopeError::Io {
                    path: here.clone(),
                    source,
                })?;
                if target.is_absolute() {
                    done.clear();
                }
                for p in normal_parts(&target).collect::<Vec<_>>().into_iter().rev() {
                    todo.push_front(p);
                }
            }
            _ => done.push(part),
        }
    }
    Ok(root.join(done.iter().collect::<PathBuf>()))
}

/// The names and `..` of a path, without `/` and `.`.
fn normal_parts(path: &Path) -> impl Iterator<Item = OsString> + '_ {
    path.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n.to_owned()),
        Component::ParentDir => Some("..".into()),
        Component::RootDir | Component::CurDir | Component::Prefix(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_resolve_inside_the_root_only() {
        let root = std::env::temp_dir().join(format!("zeroboot-scoped-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("usr/lib")).unwrap();
        symlink("usr/lib", root.join("lib")).unwrap();
        symlink("/", root.join("lib/up")).unwrap();
        symlink("../../../../etc", root.join("usr/lib/escape")).unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("loop", root.join("loop")).unwrap();
        let r = |p: &str, follow| resolve(&root, Path::new(p), follow).unwrap();
        assert_eq!(r("/lib/x.so", true), root.join("usr/lib/x.so"));
        assert_eq!(r("lib/up/usr/lib", true), root.join("usr/lib"));
        assert_eq!(r("/usr/lib/escape/shadow", true), root.join("etc/shadow"));
        assert_eq!(r("/../../etc", true), root.join("etc"));
        assert_eq!(r("/passwd", true), root.join("etc/passwd"));
        assert_eq!(r("/passwd", false), root.join("passwd"));
        assert_eq!(r("/lib", false), root.join("lib"));
        assert!(matches!(
            resolve(&root, Path::new("/loop/x"), true),
            Err(ScopeError::Loop(_))
        ));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
