//! The checks types cannot express: names, paths, sizes and counts. The
//! same rules are written as patterns and bounds in
//! `schema/template-spec.json`; the tests hold the two together.

use super::{Base, MAX_MEMORY_MIB, MIN_MEMORY_MIB, Spec, SpecError};

/// Most entries of any list in a spec.
pub const MAX_ITEMS: usize = 256;
/// Longest string in a spec (a requirement, a command, a path, a value).
pub const MAX_STRING: usize = 4096;
/// Most `env` entries.
pub const MAX_ENV: usize = 256;

type Check = Result<(), SpecError>;

fn err(field: impl Into<String>, detail: impl Into<String>) -> Check {
    Err(SpecError::field(field, detail))
}

/// Bounded, no NUL (nothing here may reach the guest as a C string with a
/// NUL in it) and no newline (the agent's configuration is line-based).
fn text(field: &str, s: &str) -> Check {
    if s.is_empty() {
        return err(field, "must not be empty");
    }
    if s.len() > MAX_STRING {
        return err(field, format!("longer than {MAX_STRING} bytes"));
    }
    if s.contains(['\0', '\n', '\r']) {
        return err(field, "must not contain NUL or line breaks");
    }
    Ok(())
}

fn list<T>(field: &str, items: &[T], each: impl Fn(&str, &T) -> Check) -> Check {
    if items.len() > MAX_ITEMS {
        return err(field, format!("more than {MAX_ITEMS} entries"));
    }
    for (i, item) in items.iter().enumerate() {
        each(&format!("{field}[{i}]"), item)?;
    }
    Ok(())
}

/// An absolute guest path without `..`.
fn guest_path(field: &str, p: &str) -> Check {
    text(field, p)?;
    if !p.starts_with('/') {
        return err(field, "expected an absolute guest path (starting with /)");
    }
    if p.split('/').any(|c| c == "..") {
        return err(field, "must not contain `..`");
    }
    Ok(())
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `name` or `name=version`, Debian's package name syntax.
fn debian_package(field: &str, s: &str) -> Check {
    text(field, s)?;
    let (name, version) = match s.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (s, None),
    };
    let name_ok = name.len() >= 2
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    let version_ok = version.is_none_or(|v| {
        !v.is_empty()
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
    });
    if name_ok && version_ok {
        Ok(())
    } else {
        err(
            field,
            "expected a Debian package name (lowercase letters, digits, + - .), optionally =VERSION",
        )
    }
}

/// A PEP 508 requirement, as far as it must be checked here: handed to the
/// resolver as one argument after `--`, so it only must not look like an
/// option or a requirements-file directive.
fn requirement(field: &str, s: &str) -> Check {
    text(field, s)?;
    if s.trim_start().starts_with('-') {
        return err(
            field,
            "expected a requirement such as \"numpy==2.*\", not an option",
        );
    }
    Ok(())
}

fn module(field: &str, s: &str) -> Check {
    text(field, s)?;
    if s.split('.').all(is_identifier) {
        Ok(())
    } else {
        err(
            field,
            "expected a module name such as \"numpy\" or \"os.path\"",
        )
    }
}

/// `name`, `UID` or `UID:GID`.
fn user(field: &str, s: &str) -> Check {
    text(field, s)?;
    let number = |n: &str| n.parse::<u32>().is_ok_and(|v| v < 65535);
    let name = |n: &str| {
        n.len() <= 32
            && n.chars()
                .next()
                .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-".contains(c))
    };
    let ok = match s.split_once(':') {
        Some((u, g)) => number(u) && number(g),
        None => number(s) || name(s),
    };
    if ok {
        Ok(())
    } else {
        err(
            field,
            "expected a user name (lowercase, at most 32 characters), UID or UID:GID",
        )
    }
}

/// Checks every value of `spec`.
/// `network`: entries the endpoint's policy accepts, caps in range.
fn network(n: &super::SpecNetwork) -> Check {
    list("network.allow", &n.allow, |f, s| text(f, s))?;
    list("network.deny", &n.deny, |f, s| text(f, s))?;
    if let Err(e) = crate::net::Policy::parse(&n.allow, &n.deny) {
        return err("network", e.to_string());
    }
    match crate::net::Limits::new(n.max_connections, n.max_bytes_per_sec) {
        Ok(_) => Ok(()),
        Err((field, e)) => err(format!("network.{field}"), e),
    }
}

pub fn spec(spec: &Spec) -> Check {
    if let Some(n) = &spec.network.0 {
        network(n)?;
    }
    if let Base::Oci(p) = &spec.base {
        text("base.oci", &p.to_string_lossy())?;
    }
    let py = &spec.python;
    list("python.packages", &py.packages, |f, s| requirement(f, s))?;
    if matches!(spec.base, Base::Oci(_)) && !py.packages.is_empty() {
        return err(
            "python.packages",
            "needs base = \"python\": an OCI image brings its own Python (install packages in the image)",
        );
    }
    list("python.preload", &py.preload, |f, s| module(f, s))?;
    if let Some(url) = &py.index_url {
        text("python.index_url", url)?;
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return err("python.index_url", "expected an http(s) URL");
        }
    }
    if let Some(p) = &py.find_links {
        text("python.find_links", &p.to_string_lossy())?;
    }
    if py.no_index && py.find_links.is_none() && !py.packages.is_empty() {
        return err(
            "python.no_index",
            "without an index, `find_links` must name a directory of wheels",
        );
    }
    list("debian.packages", &spec.debian.packages, |f, s| {
        debian_package(f, s)
    })?;
    list("files", &spec.files, |field, f| {
        text(&format!("{field}.from"), &f.from.to_string_lossy())?;
        guest_path(&format!("{field}.to"), &f.to)?;
        match &f.mode {
            Some(m) if m.len() > 4 || f.mode_bits().is_none_or(|b| b > 0o7777) => err(
                format!("{field}.mode"),
                "expected octal permission bits such as \"0644\"",
            ),
            _ => Ok(()),
        }
    })?;
    if spec.env.len() > MAX_ENV {
        return err("env", format!("more than {MAX_ENV} variables"));
    }
    for (key, value) in &spec.env {
        let field = format!("env.{key}");
        if !is_identifier(key) {
            return err(
                field,
                "expected a variable name (letters, digits, _; not starting with a digit)",
            );
        }
        if value.len() > MAX_STRING || value.contains(['\0', '\n', '\r']) {
            return err(
                field,
                format!("value must be at most {MAX_STRING} bytes, without NUL or line breaks"),
            );
        }
    }
    if let Some(cwd) = &spec.cwd {
        guest_path("cwd", cwd)?;
    }
    if let Some(u) = &spec.user {
        user("user", u)?;
    }
    // Warm-up commands go to `sh -c` as argv, so they may span lines.
    list("warmup", &spec.warmup, |f, c: &String| {
        text(f, &c.replace(['\n', '\r'], " "))
    })?;
    if let Some(m) = spec.memory_mib
        && !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&m)
    {
        return err(
            "memory_mib",
            format!("expected {MIN_MEMORY_MIB} to {MAX_MEMORY_MIB} (MiB)"),
        );
    }
    Ok(())
}
