//! What the template's spec asks of the agent, read once at boot from
//! [`PATH`], which the image builder writes (`src/image/spec_image.rs`):
//! the interpreter for the zygote, modules it preloads, and the defaults
//! every exec gets (environment, working directory, user). A request's own
//! values win over the defaults; the agent itself stays root.
//!
//! One setting per line, `KEY VALUE`; blank lines and `#` comments are
//! skipped. Values run to the end of the line (the builder refuses line
//! breaks in them):
//!
//! ```text
//! python /usr/bin/python3        # or "none"
//! preload numpy
//! env OPENBLAS_NUM_THREADS=1
//! cwd /work
//! user 1000 1000
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Where the image carries the file.
pub const PATH: &str = "/etc/zeroboot/agent.conf";

/// Defaults applied to every exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Defaults {
    /// Set before the request's own variables.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory when the request names none.
    pub cwd: Option<PathBuf>,
    /// (uid, gid) programs run as; `None`: root.
    pub user: Option<(u32, u32)>,
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateConfig {
    /// `Some(None)`: no Python; `None`: the agent's own choice.
    pub python: Option<Option<PathBuf>>,
    /// Modules the zygote imports besides the built-in list.
    pub preload: Vec<String>,
    /// Exec defaults.
    pub defaults: Defaults,
}

impl TemplateConfig {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<TemplateConfig, String> {
        let mut c = TemplateConfig::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_start();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once(' ').unwrap_or((line, ""));
            let bad = |what: &str| format!("{PATH} line {}: {what}", i + 1);
            match key {
                "python" if value == "none" => c.python = Some(None),
                "python" if value.starts_with('/') => c.python = Some(Some(value.into())),
                "preload" if !value.is_empty() && !value.contains([',', ' ']) => {
                    c.preload.push(value.to_owned())
                }
                "env" => {
                    let (k, v) = value
                        .split_once('=')
                        .filter(|(k, _)| !k.is_empty())
                        .ok_or_else(|| bad("env needs KEY=VALUE"))?;
                    c.defaults.env.push((k.into(), v.into()));
                }
                "cwd" if value.starts_with('/') => c.defaults.cwd = Some(value.into()),
                "user" => {
                    let ids: Vec<u32> = value
                        .split(' ')
                        .map(str::parse)
                        .collect::<Result<_, _>>()
                        .map_err(|_| bad("user needs UID GID"))?;
                    match ids[..] {
                        [uid, gid] => c.defaults.user = Some((uid, gid)),
                        _ => return Err(bad("user needs UID GID")),
                    }
                }
                _ => return Err(bad(&format!("cannot use {key:?} {value:?}"))),
            }
        }
        Ok(c)
    }

    /// Reads [`PATH`] (or `path`); a missing file is the empty config.
    pub fn load(path: &Path) -> Result<TemplateConfig, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => TemplateConfig::parse(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(TemplateConfig::default()),
            Err(e) => Err(format!("cannot read {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_parses() {
        let c = TemplateConfig::parse(
            "# written by zeroboot\npython /usr/local/bin/python3\npreload numpy\npreload os.path\n\
             env A=b=c\nenv EMPTY=\ncwd /work dir\nuser 1000 100\n",
        )
        .unwrap();
        assert_eq!(c.python, Some(Some("/usr/local/bin/python3".into())));
        assert_eq!(c.preload, ["numpy", "os.path"]);
        assert_eq!(
            c.defaults.env,
            [("A".into(), "b=c".into()), ("EMPTY".into(), "".into())]
        );
        assert_eq!(c.defaults.cwd, Some("/work dir".into()));
        assert_eq!(c.defaults.user, Some((1000, 100)));
        assert_eq!(
            TemplateConfig::parse("python none").unwrap().python,
            Some(None)
        );
        assert_eq!(
            TemplateConfig::parse("").unwrap(),
            TemplateConfig::default()
        );
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        for text in [
            "python relative",
            "preload a,b",
            "env =x",
            "env novalue",
            "cwd rel",
            "user 1000",
            "user x y",
            "shell /bin/sh",
        ] {
            let e = TemplateConfig::parse(&format!("\n{text}")).unwrap_err();
            assert!(e.contains("line 2"), "{text}: {e}");
        }
    }
}
