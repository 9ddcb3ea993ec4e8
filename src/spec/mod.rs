//! The template spec: one declarative document saying what a Linux template
//! holds (its base, Python and Debian packages, files, defaults for every
//! exec, modules imported before the snapshot, warm-up commands, memory,
//! and the network its forks get).
//! The same object comes from a `zeroboot.toml` file ([`Spec::from_toml`])
//! or from `template.build {spec}` over JSON-RPC ([`Spec::from_json`]); its
//! JSON Schema is `schema/template-spec.json`, also in `schema/openrpc.json`
//! as `components.schemas.TemplateSpec`.
//!
//! Everything here is pure: parsing refuses unknown fields and wrong types
//! with the field's path (`python.packages[1]`), then [`validate`] checks
//! the values (names, paths, sizes) the types cannot. Nothing touches the
//! host until [`crate::image`] assembles the image. A spec is hostile input:
//! every list and string is bounded, so a spec cannot make the builder
//! allocate without limit.

mod error;
mod validate;

pub use error::SpecError;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Smallest guest memory a spec may ask for.
pub const MIN_MEMORY_MIB: u32 = 128;
/// Largest guest memory a spec may ask for: the Linux board maps RAM below
/// 3 GiB (`vmm::linux::layout`).
pub const MAX_MEMORY_MIB: u32 = 3072;
/// Guest memory when a spec names none.
pub const DEFAULT_MEMORY_MIB: u32 = 512;
/// Largest spec document, in bytes (file or JSON).
pub const MAX_SPEC_BYTES: usize = 256 << 10;

/// What the root filesystem starts from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Base {
    /// Debian bookworm's python3 (3.11) and busybox for `sh` and the common
    /// applets.
    #[default]
    Python,
    /// An OCI image layout directory, or a `docker save` / `podman save` tar.
    Oci(PathBuf),
}

/// How much of Python's standard library the image carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stdlib {
    /// The commonly used part, zipped (see `image/python.rs`).
    Minimal,
    /// All of it, with its extension modules and their libraries.
    Full,
}

/// `[python]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PythonSpec {
    /// Requirement strings (PEP 508), resolved on the host for the guest's
    /// Python into wheels.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Modules imported in the zygote before the snapshot.
    #[serde(default)]
    pub preload: Vec<String>,
    /// Standard library size; default: `full` when `packages` is set
    /// (third-party code imports unforeseeable parts of it), else `minimal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdlib: Option<Stdlib>,
    /// A package index instead of PyPI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_url: Option<String>,
    /// A host directory of wheels searched besides the index.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub find_links: Option<PathBuf>,
    /// Use no index at all: only `find_links`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_index: bool,
}

impl PythonSpec {
    /// The standard library the image gets.
    pub fn stdlib(&self) -> Stdlib {
        self.stdlib.unwrap_or(if self.packages.is_empty() {
            Stdlib::Minimal
        } else {
            Stdlib::Full
        })
    }
}

/// `[debian]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DebianSpec {
    /// Package names (`name` or `name=version`), installed with their
    /// dependency closure from Debian bookworm.
    #[serde(default)]
    pub packages: Vec<String>,
}

/// One `[[files]]` entry: a host file or directory copied into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Host path (relative: to the spec file's directory).
    pub from: PathBuf,
    /// Absolute guest path.
    pub to: String,
    /// Permission bits for every regular file copied, as octal text
    /// ("0644"); default: the host file's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl FileSpec {
    /// The mode as a number (validated by [`validate`]).
    pub fn mode_bits(&self) -> Option<u32> {
        self.mode
            .as_deref()
            .and_then(|m| u32::from_str_radix(m, 8).ok())
    }
}

/// `network`: what the template's forks may reach unless a fork's own
/// `network` says otherwise (docs/networking.md). The image is the same with
/// or without it: only forks use it, never the build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpecNetwork {
    /// Allowed destinations: `host[:port]`, `*.domain[:port]`, `*[:port]`,
    /// `CIDR[:port]`.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Denied destinations, same forms; deny wins.
    #[serde(default)]
    pub deny: Vec<String>,
    /// Connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// Bandwidth cap each way, bytes per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_bytes_per_sec: Option<u64>,
}

/// `network = false` (none, as when absent) or a [`SpecNetwork`] table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecNetworkField(pub Option<SpecNetwork>);

impl SpecNetworkField {
    fn is_off(&self) -> bool {
        self.0.is_none()
    }
}

impl Serialize for SpecNetworkField {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.0 {
            None => s.serialize_bool(false),
            Some(n) => n.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for SpecNetworkField {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{self, MapAccess, Visitor, value::MapAccessDeserializer};
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SpecNetworkField;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("false or a table {allow, deny, max_connections, max_bytes_per_sec}")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SpecNetworkField, E> {
                match v {
                    false => Ok(SpecNetworkField(None)),
                    true => Err(E::invalid_value(de::Unexpected::Bool(true), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<SpecNetworkField, A::Error> {
                SpecNetwork::deserialize(MapAccessDeserializer::new(map))
                    .map(|n| SpecNetworkField(Some(n)))
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole template spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The root filesystem's starting point.
    #[serde(default, with = "base_serde")]
    pub base: Base,
    /// Python packages and preloads.
    #[serde(default)]
    pub python: PythonSpec,
    /// Debian packages.
    #[serde(default)]
    pub debian: DebianSpec,
    /// Host files copied into the image.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Environment of every exec (the request's own `env` wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of every exec that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// The guest user execs run as: a name, `UID` or `UID:GID`
    /// (default root). The agent itself stays root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Shell commands (`sh -c`) run once in the booted guest before the
    /// snapshot.
    #[serde(default)]
    pub warmup: Vec<String>,
    /// Guest memory in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    /// The network of the template's forks (default: none).
    #[serde(default, skip_serializing_if = "SpecNetworkField::is_off")]
    pub network: SpecNetworkField,
}

impl Spec {
    /// Parses and validates a `zeroboot.toml`. Relative host paths are
    /// resolved against `dir` (the file's directory).
    pub fn from_toml(text: &str, dir: &Path) -> Result<Spec, SpecError> {
        if text.len() > MAX_SPEC_BYTES {
            return Err(SpecError::TooLarge(text.len()));
        }
        let de = toml::Deserializer::parse(text).map_err(|e| SpecError::Syntax(e.to_string()))?;
        let spec: Spec = serde_path_to_error::deserialize(de).map_err(SpecError::from_path)?;
        spec.finish(dir)
    }

    /// Parses and validates the JSON form (`template.build {spec}`).
    /// Relative host paths are resolved against `dir`.
    pub fn from_json(value: &serde_json::Value, dir: &Path) -> Result<Spec, SpecError> {
        let spec: Spec = serde_path_to_error::deserialize(value).map_err(SpecError::from_path)?;
        spec.finish(dir)
    }

    /// Reads, parses and validates a spec file.
    pub fn load(path: &Path) -> Result<Spec, SpecError> {
        let text = read_bounded(path)?;
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(dir).map_err(|e| SpecError::Read {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => {
                let value =
                    serde_json::from_str(&text).map_err(|e| SpecError::Syntax(e.to_string()))?;
                Spec::from_json(&value, &dir)
            }
            _ => Spec::from_toml(&text, &dir),
        }
    }

    fn finish(mut self, dir: &Path) -> Result<Spec, SpecError> {
        validate::spec(&self)?;
        let absolute = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        };
        if let Base::Oci(p) = &mut self.base {
            absolute(p);
        }
        if let Some(p) = &mut self.python.find_links {
            absolute(p);
        }
        for f in &mut self.files {
            absolute(&mut f.from);
        }
        Ok(self)
    }

    /// Guest memory in MiB.
    pub fn memory_mib(&self) -> u32 {
        self.memory_mib.unwrap_or(DEFAULT_MEMORY_MIB)
    }

    /// The spec as JSON (what templates record and `inspect` shows).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a spec serialises")
    }
}

fn read_bounded(path: &Path) -> Result<String, SpecError> {
    use std::io::Read;
    let err = |e: std::io::Error| SpecError::Read {
        path: path.to_owned(),
        detail: e.to_string(),
    };
    let file = std::fs::File::open(path).map_err(err)?;
    if !file.metadata().map_err(err)?.is_file() {
        return Err(SpecError::Read {
            path: path.to_owned(),
            detail: "not a regular file".into(),
        });
    }
    let mut text = String::new();
    file.take(MAX_SPEC_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(err)?;
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge(text.len()));
    }
    Ok(text)
}

/// `base`: the string `"python"` or a table `{oci = PATH}`.
mod base_serde {
    use super::Base;
    use serde::de::{self, MapAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::path::PathBuf;

    const EXPECTED: &str = "\"python\" or {oci = PATH}";

    pub fn serialize<S: Serializer>(base: &Base, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        match base {
            Base::Python => s.serialize_str("python"),
            Base::Oci(path) => {
                let mut m = s.serialize_map(Some(1))?;
                m.serialize_entry("oci", path)?;
                m.end()
            }
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Base, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Base;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str(EXPECTED)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Base, E> {
                match v {
                    "python" => Ok(Base::Python),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Base, A::Error> {
                let mut oci: Option<PathBuf> = None;
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "oci" if oci.is_none() => oci = Some(map.next_value()?),
                        "oci" => return Err(de::Error::duplicate_field("oci")),
                        other => return Err(de::Error::unknown_field(other, &["oci"])),
                    }
                }
                oci.map(Base::Oci)
                    .ok_or_else(|| de::Error::missing_field("oci"))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests;
