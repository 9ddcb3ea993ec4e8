//! Running the host tools the build uses (apt-get, dpkg-deb, ldd, cargo, the
//! staged Python), turning failures into [`ImageError::Command`].

use super::ImageError;
use std::process::{Command, Output};

/// A printable form of `cmd` for error messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion, capturing its output; fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<Output, ImageError> {
    let out = cmd.output().map_err(|e| ImageError::Command {
        command: describe(cmd),
        detail: e.to_string(),
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(ImageError::Command {
            command: describe(cmd),
            detail: format!("{}: {}", out.status, stderr.trim()),
        })
    }
}

/// True when `program` can be found on `PATH`.
pub fn exists(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|d| d.join(program).is_file()))
}
