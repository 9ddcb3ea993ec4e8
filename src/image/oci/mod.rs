//! An OCI image as a template's root filesystem: an OCI image layout
//! directory (`oci-layout`, `index.json`, `blobs/`), or a tar of one
//! (`podman save --format oci-archive`, `docker save` since 25), or a
//! `docker save` / `podman save` archive (`manifest.json` naming a config
//! and layer tars). Users build images with the tools they have; zeroboot
//! only reads files, no container daemon involved.
//!
//! Every name in those documents is hostile input: digests must be
//! `sha256:<64 hex>`, layer paths must stay inside the archive, documents
//! are read with a size limit. Layers are applied in order by
//! [`super::layers`]; the config's `Env`, `WorkingDir` and `User` become the
//! sandbox defaults.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ImageError;
use super::layers::{self, Budget, Owners};

/// Largest index, manifest or config document read.
const MAX_DOCUMENT: u64 = 4 << 20;

/// The defaults an image's config gives its processes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OciDefaults {
    /// `Env`, as `KEY=VALUE` pairs split at the first `=`.
    pub env: Vec<(String, String)>,
    /// `WorkingDir`.
    pub working_dir: Option<String>,
    /// `User` (a name, `UID` or `UID:GID`).
    pub user: Option<String>,
}

/// An image ready to be applied.
#[derive(Debug)]
pub struct OciImage {
    /// The config's defaults.
    pub defaults: OciDefaults,
    /// The layer files, lowest first.
    pub layers: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Descriptor {
    #[serde(rename = "mediaType", default)]
    media_type: String,
    digest: String,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct Manifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct DockerEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<ProcessConfig>,
}

#[derive(Deserialize, Default)]
struct ProcessConfig {
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

fn invalid(path: &Path, detail: impl Into<String>) -> ImageError {
    ImageError::OciInvalid {
        path: path.to_owned(),
        detail: detail.into(),
    }
}

/// Reads a JSON document of at most [`MAX_DOCUMENT`] bytes.
fn document<T: for<'de> Deserialize<'de>>(image: &Path, file: &Path) -> Result<T, ImageError> {
    let f = File::open(file).map_err(|e| invalid(image, format!("{}: {e}", file.display())))?;
    let mut text = Vec::new();
    f.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut text)
        .map_err(|e| invalid(image, format!("{}: {e}", file.display())))?;
    if text.len() as u64 > MAX_DOCUMENT {
        return Err(invalid(image, format!("{} is too large", file.display())));
    }
    serde_json::from_slice(&text).map_err(|e| invalid(image, format!("{}: {e}", file.display())))
}

/// A path named inside the archive, kept inside `dir`.
fn inside(image: &Path, dir: &Path, name: &str) -> Result<PathBuf, ImageError> {
    let rel = Path::new(name);
    if name.is_empty()
        || rel.is_absolute()
        || rel
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
    {
        return Err(invalid(image, format!("path {name:?} leaves the archive")));
    }
    Ok(dir.join(rel))
}

/// The blob file of `digest` in an OCI layout.
fn blob(image: &Path, layout: &Path, digest: &str) -> Result<PathBuf, ImageError> {
    let hex = digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| invalid(image, format!("unsupported digest {digest:?}")))?;
    Ok(layout.join("blobs/sha256").join(hex))
}

/// Opens the image at `path`; a tar is unpacked under `work` first.
pub fn open(path: &Path, work: &Path) -> Result<OciImage, ImageError> {
    let meta = std::fs::metadata(path).map_err(|_| ImageError::Missing {
        what: "OCI image",
        path: path.to_owned(),
    })?;
    let layout = if meta.is_dir() {
        path.to_owned()
    } else {
        let dir = work.join("oci-archive");
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(ImageError::io("cannot remove", &dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(ImageError::io("cannot create", &dir))?;
        let f = File::open(path).map_err(ImageError::io("cannot open", path))?;
        layers::apply(
            &dir,
            BufReader::new(f),
            false,
            &mut Owners::new(),
            &mut Budget::default(),
        )
        .map_err(|e| invalid(path, format!("not an image archive: {e}")))?;
        dir
    };
    let (config, layers) = if layout.join("index.json").is_file() {
        oci_layout(path, &layout)?
    } else if layout.join("manifest.json").is_file() {
        let entries: Vec<DockerEntry> = document(path, &layout.join("manifest.json"))?;
        let entry = entries
            .into_iter()
            .next()
            .ok_or_else(|| invalid(path, "manifest.json lists no image"))?;
        let layers = entry
            .layers
            .iter()
            .map(|l| inside(path, &layout, l))
            .collect::<Result<_, _>>()?;
        (inside(path, &layout, &entry.config)?, layers)
    } else {
        return Err(invalid(
            path,
            "neither an OCI image layout (index.json) nor a docker save archive (manifest.json)",
        ));
    };
    let config: ConfigFile = document(path, &config)?;
    let process = config.config.unwrap_or_default();
    let env = process
        .env
        .unwrap_or_default()
        .into_iter()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    Ok(OciImage {
        defaults: OciDefaults {
            env,
            working_dir: process.working_dir.filter(|w| !w.is_empty()),
            user: process.user.filter(|u| !u.is_empty()),
        },
        layers,
    })
}

/// The config and layer blobs of an OCI layout's linux/amd64 image
/// (following nested indexes, at most a few levels).
fn oci_layout(image: &Path, layout: &Path) -> Result<(PathBuf, Vec<PathBuf>), ImageError> {
    let mut index: Index = document(image, &layout.join("index.json"))?;
    for _ in 0..4 {
        let chosen = index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| p.os == "linux" && p.architecture == "amd64")
            })
            .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
            .ok_or_else(|| invalid(image, "no linux/amd64 image in the index"))?;
        let file = blob(image, layout, &chosen.digest)?;
        if chosen.media_type.contains("index") || chosen.media_type.contains("manifest.list") {
            index = document(image, &file)?;
            continue;
        }
        let manifest: Manifest = document(image, &file)?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| blob(image, layout, &l.digest))
            .collect::<Result<_, _>>()?;
        return Ok((blob(image, layout, &manifest.config.digest)?, layers));
    }
    Err(invalid(image, "indexes nested too deeply"))
}

/// Applies the image's layers to `root`, lowest first.
pub fn apply(
    image: &Path,
    oci: &OciImage,
    root: &Path,
    owners: &mut Owners,
) -> Result<(), ImageError> {
    let mut budget = Budget::default();
    for layer in &oci.layers {
        let mut f = File::open(layer)
            .map_err(|e| invalid(image, format!("layer {}: {e}", layer.display())))?;
        let mut magic = [0u8; 4];
        let n = f
            .read(&mut magic)
            .map_err(ImageError::io("cannot read", layer))?;
        let head = std::io::Cursor::new(magic[..n].to_vec());
        let stream = BufReader::new(head.chain(f));
        let result = match magic {
            [0x1f, 0x8b, ..] => layers::apply(
                root,
                flate2::read::GzDecoder::new(stream),
                true,
                owners,
                &mut budget,
            ),
            [0x28, 0xb5, 0x2f, 0xfd] => {
                return Err(invalid(
                    image,
                    "zstd-compressed layers are not supported (use gzip or none)",
                ));
            }
            _ => layers::apply(root, stream, true, owners, &mut budget),
        };
        result.map_err(|source| ImageError::Layer {
            layer: layer.clone(),
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
