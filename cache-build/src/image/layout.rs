//! OCI image layouts: writing an image as a directory or a tar stream, and reading one back.

use std::fs;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use cache_core::config::go_time;
use cache_core::descriptor::{annotation, media_type};
use cache_core::layout::{self, OciIndex};
use cache_core::{Descriptor, Digest, RawIndex};
use serde::Deserialize;

use super::config::{ParsedConfig, parse_config};
use super::{Error, Image, ImageName};

/// `oci-layout` as Go's `json.Marshal(ocispec.ImageLayout{..})` writes it.
const OCI_LAYOUT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
/// `org.opencontainers.image.created`, which BuildKit's OCI exporter sets on the index entry.
const ANNOTATION_CREATED: &str = "org.opencontainers.image.created";
/// Largest manifest, index or config blob read into memory.
const MAX_METADATA_BLOB: u64 = 16 << 20;
/// How deep image indexes may nest before a layout is considered corrupt.
const MAX_INDEX_DEPTH: usize = 4;

/// An image read from an OCI layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LayoutImage {
    /// The digest of the image manifest (for an index, of the `linux/amd64` manifest chosen).
    pub manifest_digest: Digest,
    /// The image manifest, as stored.
    pub manifest: RawIndex,
    /// The config descriptor from the manifest.
    pub config_descriptor: Descriptor,
    /// The config blob, as stored.
    pub config_bytes: Vec<u8>,
    /// The parsed config.
    pub config: ParsedConfig,
    /// The layers, bottom first, each with `containerd.io/uncompressed` set from the config's
    /// `rootfs.diff_ids`.
    pub layers: Vec<Descriptor>,
    /// The blob file of each layer, in the same order as `layers`.
    pub layer_paths: Vec<PathBuf>,
}

/// Splits `[oci-layout://]DIR[:TAG][@sha256:...]` into the directory and the reference that
/// [`read_layout_image`] takes: the digest if one is given, else the tag, else `latest`.
///
/// A `:` followed by a `/` belongs to the path (`/mnt/a:b/dir` has no tag).
pub fn split_layout_ref(text: &str) -> (PathBuf, String) {
    let text = text.strip_prefix("oci-layout://").unwrap_or(text);
    let (rest, digest) = match text.rsplit_once('@') {
        Some((rest, digest)) if digest.starts_with("sha256:") => (rest, Some(digest)),
        _ => (text, None),
    };
    let (dir, tag) = match rest.rsplit_once(':') {
        Some((dir, tag)) if !tag.contains('/') && !dir.is_empty() => (dir, Some(tag)),
        _ => (rest, None),
    };
    let reference = digest.or(tag).unwrap_or("latest");
    (PathBuf::from(dir), reference.to_owned())
}

/// Writes `image` as an OCI image layout directory (`--output type=oci,dest=DIR,tar=false`).
///
/// Behavior:
/// - Creates `dir` if needed; blobs already present with the right size are kept.
/// - Layer bytes come from `open_blob`; every blob is checked against its digest and size before
///   it is moved into `blobs/sha256/`, so a partial or wrong blob never appears under its name.
/// - `index.json` is merged as BuildKit's client does: entries with the same name annotations
///   are replaced, other entries are kept. One entry per name; with no names, one entry tagged
///   `latest`.
/// - Not safe against another process updating the same `index.json` at the same time.
pub fn write_layout_dir(
    dir: &Path,
    image: &Image,
    names: &[ImageName],
    open_blob: &mut dyn FnMut(&Descriptor) -> io::Result<Box<dyn Read + Send>>,
) -> Result<(), Error> {
    let blob_dir = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(|source| Error::Io {
        op: "create directory",
        path: blob_dir.clone(),
        source,
    })?;
    for (desc, bytes) in blobs(image) {
        let path = blob_path(dir, &desc.digest);
        if fs::metadata(&path).is_ok_and(|meta| meta.is_file() && meta.len() == desc.size) {
            continue;
        }
        let reader: Box<dyn Read + Send> = match bytes {
            Some(bytes) => Box::new(io::Cursor::new(bytes.to_vec())),
            None => open_blob(&desc).map_err(|source| Error::Blob {
                digest: desc.digest.clone(),
                source,
            })?,
        };
        write_blob_file(&blob_dir, &path, &desc, reader)?;
    }
    write_file_atomic(dir, "oci-layout", OCI_LAYOUT)?;

    let index_path = dir.join("index.json");
    let mut index = match fs::read(&index_path) {
        Ok(bytes) => OciIndex::from_json(&bytes).map_err(|err| Error::Layout {
            dir: dir.to_owned(),
            reason: format!(
                "existing index.json is not valid JSON ({err}); remove it or write to another directory"
            ),
        })?,
        Err(err) if err.kind() == io::ErrorKind::NotFound => OciIndex::default(),
        Err(source) => {
            return Err(Error::Io {
                op: "read",
                path: index_path,
                source,
            });
        }
    };
    let base = manifest_entry(image);
    if names.is_empty() {
        index.put_image(&base, "latest", None);
    }
    for name in names {
        index.put_image(&base, &name.tag, Some(&name.full));
    }
    write_file_atomic(dir, "index.json", &index.to_json())
}

/// Writes `image` as an OCI image layout tar (`--output type=oci,dest=FILE`), as buildx does.
///
/// Behavior:
/// - Entries are sorted by name (`blobs/`, `blobs/sha256/`, blobs, `index.json`, `oci-layout`)
///   with containerd's headers: mode 0444 for blobs and `oci-layout`, 0644 for `index.json`,
///   0755 for directories, owner 0 and mtime 0. The same image and names give the same bytes.
/// - `index.json` has one entry per name (`io.containerd.image.name` = the full name,
///   `org.opencontainers.image.ref.name` = the tag); with no names, one entry without names.
/// - Layer bytes are streamed from `open_blob` and checked against their digest and size; a
///   mismatch is an error, and the output written so far must then be discarded.
pub fn write_layout_tar(
    out: impl Write,
    image: &Image,
    names: &[ImageName],
    open_blob: &mut dyn FnMut(&Descriptor) -> io::Result<Box<dyn Read + Send>>,
) -> Result<(), Error> {
    let output_error = |source: io::Error| Error::Io {
        op: "write",
        path: PathBuf::from("the OCI layout tar stream"),
        source,
    };
    let base = manifest_entry(image);
    let mut index = OciIndex::default();
    if names.is_empty() {
        index.put_untagged(&base);
    }
    for name in names {
        index.put_image(&base, &name.tag, Some(&name.full));
    }
    let index_bytes = index.to_json();

    let mut blobs = blobs(image);
    blobs.sort_by(|a, b| a.0.digest.digest().cmp(b.0.digest.digest()));

    let mut builder = tar::Builder::new(out);
    for dir in ["blobs/", "blobs/sha256/"] {
        let header = tar_header(dir, tar::EntryType::Directory, 0o755, 0).map_err(output_error)?;
        builder.append(&header, io::empty()).map_err(output_error)?;
    }
    for (desc, bytes) in blobs {
        let name = format!("blobs/sha256/{}", desc.digest.digest());
        let header =
            tar_header(&name, tar::EntryType::Regular, 0o444, desc.size).map_err(output_error)?;
        let inner: Box<dyn Read + Send> = match bytes {
            Some(bytes) => Box::new(io::Cursor::new(bytes.to_vec())),
            None => open_blob(&desc).map_err(|source| Error::Blob {
                digest: desc.digest.clone(),
                source,
            })?,
        };
        let mut reader = VerifyingReader::new(inner, desc.size);
        let res = builder.append(&header, &mut reader);
        if let Some(source) = reader.read_error.take() {
            return Err(Error::Blob {
                digest: desc.digest.clone(),
                source,
            });
        }
        res.map_err(output_error)?;
        reader.finish(&desc, "blob from the build's stores")?;
    }
    for (name, mode, bytes) in [
        ("index.json", 0o644, index_bytes.as_slice()),
        ("oci-layout", 0o444, OCI_LAYOUT),
    ] {
        let header = tar_header(name, tar::EntryType::Regular, mode, bytes.len() as u64)
            .map_err(output_error)?;
        builder.append(&header, bytes).map_err(output_error)?;
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(output_error)
}

/// Reads the image named `reference` (a tag, or `sha256:...`) from the OCI layout `dir`.
///
/// Behavior:
/// - A tag matches an `index.json` entry whose `io.containerd.image.name` (also after normalising:
///   `app:1.0` finds `docker.io/library/app:1.0`) or `org.opencontainers.image.ref.name` equals
///   it, or whose image name ends with `:TAG`.
///   An empty reference means `latest`; `latest` also matches a lone entry without a ref name.
/// - A digest matches an entry by digest, or any manifest stored in `blobs/`.
/// - An image index resolves to its `linux/amd64` manifest (attestations are skipped).
/// - The manifest and config are checked against their digests; layer blobs must exist with the
///   size the manifest gives (their content is checked when they are read).
pub fn read_layout_image(dir: &Path, reference: &str) -> Result<LayoutImage, Error> {
    let layout_error = bad_layout(dir);
    let index = read_index(dir)?;
    let reference = if reference.is_empty() {
        "latest"
    } else {
        reference
    };
    let desc = find_image(dir, &index, reference)?;
    let (manifest, manifest_json) = read_manifest(dir, desc)?;
    let config_descriptor = manifest_json
        .config
        .ok_or_else(|| layout_error(format!("manifest {} has no config", manifest.digest)))?;
    check_config_type(dir, &config_descriptor, &manifest.digest)?;
    let config_bytes = read_metadata_blob(dir, &config_descriptor)?;
    let config = parse_config(&config_bytes)?;
    if config.diff_ids.len() != manifest_json.layers.len() {
        return Err(layout_error(format!(
            "manifest {} has {} layers but its config lists {} diff_ids",
            manifest.digest,
            manifest_json.layers.len(),
            config.diff_ids.len()
        )));
    }
    let mut layers = manifest_json.layers;
    let layer_paths = check_layers(dir, &mut layers, &config.diff_ids)?;
    Ok(LayoutImage {
        manifest_digest: manifest.digest.clone(),
        manifest,
        config_descriptor,
        config_bytes,
        config,
        layers,
        layer_paths,
    })
}

/// Makes the error for what is wrong with the layout `dir`.
fn bad_layout(dir: &Path) -> impl Fn(String) -> Error + '_ {
    move |reason| Error::Layout {
        dir: dir.to_owned(),
        reason,
    }
}

/// Reads and parses the `index.json` of the layout `dir`.
fn read_index(dir: &Path) -> Result<OciIndex, Error> {
    let layout_error = bad_layout(dir);
    let index_path = dir.join("index.json");
    let index_bytes = fs::read(&index_path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            layout_error("no index.json: not an OCI image layout directory".into())
        } else {
            Error::Io {
                op: "read",
                path: index_path.clone(),
                source,
            }
        }
    })?;
    OciIndex::from_json(&index_bytes)
        .map_err(|err| layout_error(format!("index.json is not a valid image index: {err}")))
}

/// The descriptor `reference` (a tag or a digest, see [`read_layout_image`]) names in `index`.
fn find_image(dir: &Path, index: &OciIndex, reference: &str) -> Result<Descriptor, Error> {
    let layout_error = bad_layout(dir);
    let entry_descriptor = |entry: &cache_core::layout::IndexEntry| {
        entry
            .descriptor()
            .map_err(|what| layout_error(format!("index.json has an entry with {what}")))
    };
    if reference.starts_with("sha256:") {
        let digest = cache_core::digest::parse_sha256(reference).map_err(&layout_error)?;
        return match index.find_digest(&digest) {
            Some(entry) => entry_descriptor(entry),
            None => Ok(Descriptor::new("", digest, 0)),
        };
    }
    // A familiar name (`app:1.0`) also matches its normalised form (`docker.io/library/app:1.0`).
    let full = super::image_names(reference).ok().map(|name| name.full);
    let entry = index
        .find_image(reference, full.as_deref())
        .ok_or_else(|| {
            let mut tags: Vec<&str> = index
                .entries()
                .iter()
                .filter_map(cache_core::layout::IndexEntry::tag)
                .collect();
            tags.dedup();
            layout_error(format!(
                "no image tagged {reference:?} in index.json (tags: {})",
                if tags.is_empty() {
                    "none".to_owned()
                } else {
                    tags.join(", ")
                }
            ))
        })?;
    entry_descriptor(entry)
}

/// Reads the manifest `desc` names, following image indexes (to their `linux/amd64` image) at
/// most [`MAX_INDEX_DEPTH`] levels deep.
fn read_manifest(dir: &Path, mut desc: Descriptor) -> Result<(RawIndex, ManifestDoc), Error> {
    let layout_error = bad_layout(dir);
    let mut depth = 0;
    loop {
        let bytes = read_metadata_blob(dir, &desc)?;
        let doc: ManifestDoc = serde_json::from_slice(&bytes).map_err(|err| {
            layout_error(format!(
                "blob {} is not a valid manifest or index: {err}",
                desc.digest
            ))
        })?;
        let kind = if desc.media_type.is_empty() {
            doc.media_type.clone().unwrap_or_default()
        } else {
            desc.media_type.clone()
        };
        let is_index = kind == media_type::OCI_INDEX
            || kind == media_type::DOCKER_LIST
            || (kind.is_empty() && doc.manifests.is_some());
        if !is_index {
            let media = (!kind.is_empty()).then_some(kind);
            let manifest = RawIndex {
                media_type: media,
                digest: desc.digest.clone(),
                bytes: bytes.into(),
            };
            return Ok((manifest, doc));
        }
        depth += 1;
        if depth > MAX_INDEX_DEPTH {
            return Err(layout_error(format!(
                "image indexes nest more than {MAX_INDEX_DEPTH} levels deep at {}",
                desc.digest
            )));
        }
        desc = layout::pick_platform(
            doc.manifests.as_deref().unwrap_or_default(),
            "linux",
            "amd64",
        )
        .cloned()
        .ok_or_else(|| {
            layout_error(format!(
                "image index {} has no linux/amd64 image; this builder only runs linux/amd64",
                desc.digest
            ))
        })?;
    }
}

/// Refuses a manifest whose config is not an image config (a BuildKit cache, an artifact).
fn check_config_type(dir: &Path, config: &Descriptor, manifest: &Digest) -> Result<(), Error> {
    let layout_error = bad_layout(dir);
    match config.media_type.as_str() {
        media_type::OCI_IMAGE_CONFIG | media_type::DOCKER_IMAGE_CONFIG | "" => Ok(()),
        media_type::CACHE_CONFIG => Err(layout_error(format!(
            "manifest {manifest} is a BuildKit cache, not an image; use it with --cache-from type=local,src=DIR"
        ))),
        other => Err(layout_error(format!(
            "manifest {manifest} has config type {other:?}, not an image config"
        ))),
    }
}

/// Annotates each layer with its diff ID and checks that its blob is in `blobs/` with the size
/// the manifest gives; returns the blobs' paths.
fn check_layers(
    dir: &Path,
    layers: &mut [Descriptor],
    diff_ids: &[Digest],
) -> Result<Vec<PathBuf>, Error> {
    let layout_error = bad_layout(dir);
    let mut layer_paths = Vec::with_capacity(layers.len());
    for (layer, diff_id) in layers.iter_mut().zip(diff_ids) {
        layer
            .annotations
            .insert(annotation::UNCOMPRESSED.into(), diff_id.to_string());
        let path = blob_path(dir, &layer.digest);
        let meta = fs::metadata(&path).map_err(|source| {
            if source.kind() == io::ErrorKind::NotFound {
                layout_error(format!(
                    "layer blob {} is missing from blobs/; the layout is incomplete",
                    layer.digest
                ))
            } else {
                Error::Io {
                    op: "stat",
                    path: path.clone(),
                    source,
                }
            }
        })?;
        if meta.len() != layer.size {
            return Err(Error::DigestMismatch {
                expected: layer.digest.clone(),
                actual: format!("{} bytes, not {}", meta.len(), layer.size),
                context: path.display().to_string(),
            });
        }
        layer_paths.push(path);
    }
    Ok(layer_paths)
}

/// The fields of a manifest or index that reading needs.
#[derive(Deserialize)]
struct ManifestDoc {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default, deserialize_with = "null_as_default")]
    layers: Vec<Descriptor>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// The index entry for the image's manifest, before names are added.
pub(super) fn manifest_entry(image: &Image) -> Descriptor {
    let mut entry = Descriptor::new(
        media_type::OCI_MANIFEST,
        image.manifest.digest.clone(),
        image.manifest.bytes.len() as u64,
    );
    if let Some(created) = config_created(&image.config.1) {
        entry.annotations.insert(ANNOTATION_CREATED.into(), created);
    }
    entry
}

/// The config's `created`, as Go's `time.RFC3339` in UTC (whole seconds), as BuildKit annotates.
fn config_created(config: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Created {
        created: Option<String>,
    }
    let created = serde_json::from_slice::<Created>(config).ok()?.created?;
    let time = go_time::parse(&created).ok()?;
    let utc = time
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .ok()?;
    Some(go_time::format(&utc))
}

/// Config, manifest and (deduplicated) layers; the first two with their bytes.
fn blobs(image: &Image) -> Vec<(Descriptor, Option<&[u8]>)> {
    let mut out = vec![
        (image.config.0.clone(), Some(image.config.1.as_slice())),
        (image.manifest.descriptor(), Some(&image.manifest.bytes[..])),
    ];
    for layer in &image.layers {
        if !out.iter().any(|(desc, _)| desc.digest == layer.digest) {
            out.push((layer.clone(), None));
        }
    }
    out
}

fn blob_path(dir: &Path, digest: &Digest) -> PathBuf {
    dir.join("blobs")
        .join(digest.algorithm().as_ref())
        .join(digest.digest())
}

fn tar_header(name: &str, kind: tar::EntryType, mode: u32, size: u64) -> io::Result<tar::Header> {
    let mut header = tar::Header::new_ustar();
    header.set_path(name)?;
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(size);
    header.set_cksum();
    Ok(header)
}

/// Reads a manifest, index or config blob and checks it against `desc`.
fn read_metadata_blob(dir: &Path, desc: &Descriptor) -> Result<Vec<u8>, Error> {
    let path = blob_path(dir, &desc.digest);
    let file = fs::File::open(&path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            Error::Layout {
                dir: dir.to_owned(),
                reason: format!("blob {} is missing from blobs/", desc.digest),
            }
        } else {
            Error::Io {
                op: "open",
                path: path.clone(),
                source,
            }
        }
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_METADATA_BLOB + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::Io {
            op: "read",
            path: path.clone(),
            source,
        })?;
    if bytes.len() as u64 > MAX_METADATA_BLOB {
        return Err(Error::Layout {
            dir: dir.to_owned(),
            reason: format!(
                "blob {} is larger than {MAX_METADATA_BLOB} bytes: not a manifest or config",
                desc.digest
            ),
        });
    }
    let actual = cache_core::digest::sha256(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            actual: actual.to_string(),
            context: path.display().to_string(),
        });
    }
    if desc.size != 0 && desc.size != bytes.len() as u64 {
        return Err(Error::DigestMismatch {
            expected: desc.digest.clone(),
            actual: format!("{} bytes, not {}", bytes.len(), desc.size),
            context: path.display().to_string(),
        });
    }
    Ok(bytes)
}

/// Copies `reader` into a temporary file in `blob_dir`, checks it, and renames it to `path`.
fn write_blob_file(
    blob_dir: &Path,
    path: &Path,
    desc: &Descriptor,
    reader: Box<dyn Read + Send>,
) -> Result<(), Error> {
    let io_error = |op: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| Error::Io { op, path, source }
    };
    let mut temp = tempfile::NamedTempFile::new_in(blob_dir)
        .map_err(io_error("create a temporary file in", blob_dir))?;
    let mut verifying = VerifyingReader::new(reader, desc.size);
    let res = io::copy(&mut verifying, temp.as_file_mut());
    if let Some(source) = verifying.read_error.take() {
        return Err(Error::Blob {
            digest: desc.digest.clone(),
            source,
        });
    }
    res.map_err(io_error("write", temp.path()))?;
    verifying.finish(desc, "blob from the build's stores")?;
    temp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o444))
        .map_err(io_error("set permissions of", temp.path()))?;
    temp.persist(path).map_err(|err| Error::Io {
        op: "rename a temporary file to",
        path: path.to_owned(),
        source: err.error,
    })?;
    Ok(())
}

fn write_file_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    let path = dir.join(name);
    let io_error = |op: &'static str| {
        let path = path.clone();
        move |source| Error::Io { op, path, source }
    };
    let mut temp =
        tempfile::NamedTempFile::new_in(dir).map_err(io_error("create a temporary file for"))?;
    temp.write_all(bytes).map_err(io_error("write"))?;
    temp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .map_err(io_error("set permissions of"))?;
    temp.persist(&path).map_err(|err| Error::Io {
        op: "replace",
        path: path.clone(),
        source: err.error,
    })?;
    Ok(())
}

/// Passes exactly `size` bytes through while hashing them; short input is an error.
struct VerifyingReader<R> {
    inner: R,
    hasher: cache_core::digest::Hasher,
    remaining: u64,
    /// The first error the inner reader returned (to tell it apart from output errors).
    read_error: Option<io::Error>,
}

impl<R: Read> VerifyingReader<R> {
    fn new(inner: R, size: u64) -> Self {
        Self {
            inner,
            hasher: cache_core::digest::Hasher::new(),
            remaining: size,
            read_error: None,
        }
    }

    /// Checks that the input has no bytes beyond `size` and that the digest matches.
    fn finish(mut self, desc: &Descriptor, context: &str) -> Result<(), Error> {
        let mut extra = [0u8; 1];
        let n_extra = loop {
            match self.inner.read(&mut extra) {
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                res => break res,
            }
        }
        .map_err(|source| Error::Blob {
            digest: desc.digest.clone(),
            source,
        })?;
        if n_extra != 0 {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                actual: format!("more than {} bytes", desc.size),
                context: context.to_owned(),
            });
        }
        let actual = self.hasher.finish();
        if actual != desc.digest {
            return Err(Error::DigestMismatch {
                expected: desc.digest.clone(),
                actual: actual.to_string(),
                context: context.to_owned(),
            });
        }
        Ok(())
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = match self.inner.read(&mut buf[..max]) {
            Ok(n) => n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => return Err(err),
            Err(err) => {
                let copy = io::Error::new(err.kind(), err.to_string());
                self.read_error = Some(err);
                return Err(copy);
            }
        };
        if n == 0 {
            let err = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "blob ended {} bytes short of its descriptor's size",
                    self.remaining
                ),
            );
            self.read_error = Some(io::Error::new(err.kind(), err.to_string()));
            return Err(err);
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::{
        HISTORY_COMMENT, HistoryEntry, ImageSpec, RuntimeConfig, assemble, image_names,
    };
    use std::collections::HashMap;
    use std::process::Command;

    /// A real gzip layer holding `hello.txt` (and `bin/`), built by hand.
    fn tiny_layer(text: &str) -> (Descriptor, Vec<u8>) {
        let mut tar_bytes = Vec::new();
        {
            let mut builder = tar::Builder::new(&mut tar_bytes);
            let mut dir = tar::Header::new_ustar();
            dir.set_path("bin/").unwrap();
            dir.set_entry_type(tar::EntryType::Directory);
            dir.set_mode(0o755);
            dir.set_size(0);
            dir.set_mtime(1);
            dir.set_cksum();
            builder.append(&dir, io::empty()).unwrap();
            let mut file = tar::Header::new_ustar();
            file.set_path("hello.txt").unwrap();
            file.set_mode(0o644);
            file.set_size(text.len() as u64);
            file.set_mtime(1);
            file.set_cksum();
            builder.append(&file, text.as_bytes()).unwrap();
            builder.finish().unwrap();
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&tar_bytes).unwrap();
        let blob = gz.finish().unwrap();
        let mut desc = Descriptor::new(
            media_type::OCI_LAYER_GZIP,
            cache_core::digest::sha256(&blob),
            blob.len() as u64,
        );
        desc.annotations.insert(
            annotation::UNCOMPRESSED.into(),
            cache_core::digest::sha256(&tar_bytes).to_string(),
        );
        (desc, blob)
    }

    struct Fixture {
        image: Image,
        blobs: HashMap<Digest, Vec<u8>>,
    }

    impl Fixture {
        fn new(texts: &[&str], cmd: &str) -> Self {
            let mut blobs = HashMap::new();
            let mut layers = Vec::new();
            let mut history = Vec::new();
            for text in texts {
                let (desc, blob) = tiny_layer(text);
                blobs.insert(desc.digest.clone(), blob);
                layers.push(desc);
                history.push(HistoryEntry {
                    created: Some(
                        time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
                    ),
                    created_by: format!("COPY {text} /hello.txt # buildkit"),
                    comment: Some(HISTORY_COMMENT.into()),
                    empty_layer: false,
                });
            }
            let spec = ImageSpec {
                architecture: "amd64".into(),
                os: "linux".into(),
                created: None,
                config: RuntimeConfig {
                    env: vec!["PATH=/bin".into(), "GREETING=hi".into()],
                    cmd: Some(vec![cmd.into()]),
                    working_dir: Some("/srv".into()),
                    user: Some("1000:1000".into()),
                    exposed_ports: ["8080/tcp".to_string()].into(),
                    labels: [("org.example".to_string(), "yes".to_string())].into(),
                    ..RuntimeConfig::default()
                },
                history,
                layers,
                ..ImageSpec::default()
            };
            Self {
                image: assemble(&spec).unwrap(),
                blobs,
            }
        }

        fn opener(&self) -> impl FnMut(&Descriptor) -> io::Result<Box<dyn Read + Send>> + '_ {
            |desc: &Descriptor| match self.blobs.get(&desc.digest) {
                Some(bytes) => Ok(Box::new(io::Cursor::new(bytes.clone())) as Box<dyn Read + Send>),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such blob")),
            }
        }

        fn write_dir(&self, dir: &Path, names: &[&str]) {
            let names: Vec<_> = names.iter().map(|n| image_names(n).unwrap()).collect();
            write_layout_dir(dir, &self.image, &names, &mut self.opener()).unwrap();
        }
    }

    fn read_index(dir: &Path) -> OciIndex {
        OciIndex::from_json(&fs::read(dir.join("index.json")).unwrap()).unwrap()
    }

    #[test]
    fn a_written_directory_reads_back_by_tag_name_and_digest() {
        let fixture = Fixture::new(&["one", "two"], "/bin/app");
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("out");
        fixture.write_dir(&dir, &["app:1.0", "127.0.0.1:5000/x/app"]);

        let index = read_index(&dir);
        assert_eq!(index.media_type(), Some(media_type::OCI_INDEX));
        assert_eq!(index.entries().len(), 2);
        assert_eq!(
            index.entries()[0].annotation(annotation::IMAGE_NAME),
            Some("docker.io/library/app:1.0")
        );
        assert_eq!(
            index.entries()[0].annotation(annotation::REF_NAME),
            Some("1.0")
        );
        assert_eq!(
            index.entries()[1].annotation(annotation::REF_NAME),
            Some("latest")
        );
        assert_eq!(
            index.entries()[0].annotation(ANNOTATION_CREATED),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            fs::read(dir.join("oci-layout")).unwrap(),
            br#"{"imageLayoutVersion":"1.0.0"}"#
        );

        let expected_diff_ids: Vec<_> = fixture
            .image
            .layers
            .iter()
            .map(|layer| layer.diff_id().unwrap())
            .collect();
        for reference in [
            "1.0",
            "docker.io/library/app:1.0",
            "app:1.0",
            "latest",
            "",
            fixture.image.manifest.digest.as_ref(),
        ] {
            let read = read_layout_image(&dir, reference)
                .unwrap_or_else(|err| panic!("{reference:?}: {err}"));
            assert_eq!(
                read.manifest_digest, fixture.image.manifest.digest,
                "{reference}"
            );
            assert_eq!(read.manifest.bytes, fixture.image.manifest.bytes);
            assert_eq!(read.config_bytes, fixture.image.config.1);
            assert_eq!(read.config_descriptor, fixture.image.config.0);
            assert_eq!(read.config.config.cmd, Some(vec!["/bin/app".to_string()]));
            assert_eq!(read.config.config.working_dir.as_deref(), Some("/srv"));
            assert_eq!(read.config.diff_ids, expected_diff_ids);
            let read_diff_ids: Vec<_> = read.layers.iter().map(|l| l.diff_id().unwrap()).collect();
            assert_eq!(read_diff_ids, expected_diff_ids);
            for (layer, path) in read.layers.iter().zip(&read.layer_paths) {
                assert_eq!(fs::read(path).unwrap(), fixture.blobs[&layer.digest]);
            }
        }
        let err = read_layout_image(&dir, "2.0").unwrap_err().to_string();
        assert!(
            err.contains("no image tagged \"2.0\"") && err.contains("1.0, latest"),
            "{err}"
        );
    }

    #[test]
    fn rewriting_a_tag_replaces_its_entry_and_keeps_the_others() {
        let first = Fixture::new(&["one"], "/first");
        let second = Fixture::new(&["two"], "/second");
        let tmp = tempfile::tempdir().unwrap();
        first.write_dir(tmp.path(), &["app:1", "app:2"]);
        second.write_dir(tmp.path(), &["app:2"]);
        let index = read_index(tmp.path());
        assert_eq!(index.entries().len(), 2);
        let one = read_layout_image(tmp.path(), "1").unwrap();
        let two = read_layout_image(tmp.path(), "2").unwrap();
        assert_eq!(one.manifest_digest, first.image.manifest.digest);
        assert_eq!(two.manifest_digest, second.image.manifest.digest);
        // Unnamed output is tagged `latest`, as buildx does for `tar=false` without `-t`.
        let tmp2 = tempfile::tempdir().unwrap();
        first.write_dir(tmp2.path(), &[]);
        let index = read_index(tmp2.path());
        assert_eq!(
            index.entries()[0].annotation(annotation::REF_NAME),
            Some("latest")
        );
        assert_eq!(index.entries()[0].annotation(annotation::IMAGE_NAME), None);
    }

    #[test]
    fn a_blob_with_wrong_content_is_not_written() {
        let fixture = Fixture::new(&["one"], "/app");
        let tmp = tempfile::tempdir().unwrap();
        let layer = fixture.image.layers[0].clone();
        let mut wrong = |_: &Descriptor| -> io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(io::Cursor::new(vec![7u8; layer.size as usize])))
        };
        let err = write_layout_dir(tmp.path(), &fixture.image, &[], &mut wrong).unwrap_err();
        assert!(
            matches!(&err, Error::DigestMismatch { expected, .. } if *expected == layer.digest),
            "{err}"
        );
        assert!(!blob_path(tmp.path(), &layer.digest).exists());
        let mut short = |_: &Descriptor| -> io::Result<Box<dyn Read + Send>> {
            Ok(Box::new(io::Cursor::new(vec![7u8; 3])))
        };
        let err = write_layout_tar(io::sink(), &fixture.image, &[], &mut short).unwrap_err();
        assert!(
            matches!(&err, Error::Blob { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof),
            "{err}"
        );
        let mut long = |desc: &Descriptor| -> io::Result<Box<dyn Read + Send>> {
            let mut bytes = fixture.blobs[&desc.digest].clone();
            bytes.push(0);
            Ok(Box::new(io::Cursor::new(bytes)))
        };
        let err = write_layout_tar(io::sink(), &fixture.image, &[], &mut long).unwrap_err();
        assert!(matches!(&err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn a_tar_layout_is_sorted_deterministic_and_named_like_buildx() {
        let fixture = Fixture::new(&["one", "two"], "/app");
        let names = vec![
            image_names("app:1.0").unwrap(),
            image_names("reg.io/app:2").unwrap(),
        ];
        let mut first = Vec::new();
        write_layout_tar(&mut first, &fixture.image, &names, &mut fixture.opener()).unwrap();
        let mut second = Vec::new();
        write_layout_tar(&mut second, &fixture.image, &names, &mut fixture.opener()).unwrap();
        assert_eq!(first, second);

        let mut archive = tar::Archive::new(first.as_slice());
        let mut entries = Vec::new();
        let mut index_bytes = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            assert_eq!(header.mtime().unwrap(), 0);
            assert_eq!(header.uid().unwrap(), 0);
            entries.push((path.clone(), header.mode().unwrap()));
            if path == "index.json" {
                entry.read_to_end(&mut index_bytes).unwrap();
            }
        }
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert_eq!(paths[..2], ["blobs/", "blobs/sha256/"]);
        assert_eq!(paths[paths.len() - 2..], ["index.json", "oci-layout"]);
        assert_eq!(paths.len(), 2 + 4 + 2, "{paths:?}");
        assert!(entries.contains(&("index.json".into(), 0o644)));
        assert!(entries.contains(&("blobs/sha256/".into(), 0o755)));
        assert!(entries.contains(&(
            format!("blobs/sha256/{}", fixture.image.manifest.digest.digest()),
            0o444
        )));

        let index: serde_json::Value = serde_json::from_slice(&index_bytes).unwrap();
        assert_eq!(index["schemaVersion"], 2);
        let manifests = index["manifests"].as_array().unwrap();
        assert_eq!(manifests.len(), 2);
        assert_eq!(
            manifests[0]["digest"],
            fixture.image.manifest.digest.to_string()
        );
        assert_eq!(manifests[0]["mediaType"], media_type::OCI_MANIFEST);
        assert_eq!(
            manifests[0]["annotations"],
            serde_json::json!({
                "io.containerd.image.name": "docker.io/library/app:1.0",
                "org.opencontainers.image.created": "2023-11-14T22:13:20Z",
                "org.opencontainers.image.ref.name": "1.0",
            })
        );
        assert_eq!(
            manifests[1]["annotations"]["io.containerd.image.name"],
            "reg.io/app:2"
        );
        assert_eq!(
            manifests[1]["annotations"]["org.opencontainers.image.ref.name"],
            "2"
        );

        let tmp = tempfile::tempdir().unwrap();
        tar::Archive::new(first.as_slice())
            .unpack(tmp.path())
            .unwrap();
        let read = read_layout_image(tmp.path(), "2").unwrap();
        assert_eq!(read.manifest_digest, fixture.image.manifest.digest);
        assert_eq!(read.layers.len(), 2);
    }

    #[test]
    fn an_index_resolves_to_its_linux_amd64_manifest() {
        let fixture = Fixture::new(&["one"], "/app");
        let tmp = tempfile::tempdir().unwrap();
        fixture.write_dir(tmp.path(), &["app:single"]);
        let manifest = fixture.image.manifest.descriptor();
        let entry = |platform: serde_json::Value, annotations: &[(&str, &str)]| {
            let mut desc = manifest.clone();
            desc.platform = Some(platform);
            desc.annotations = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            desc
        };
        let bogus = Descriptor::new(
            media_type::OCI_MANIFEST,
            cache_core::digest::sha256(b"arm"),
            3,
        );
        let attestation = entry(
            serde_json::json!({"architecture": "unknown", "os": "unknown"}),
            &[(layout::REFERENCE_TYPE, "attestation-manifest")],
        );
        let mut arm = bogus.clone();
        arm.platform = Some(serde_json::json!({"architecture": "arm64", "os": "linux"}));
        let mut inner = OciIndex::default();
        for desc in [
            arm,
            attestation,
            entry(
                serde_json::json!({"architecture": "amd64", "os": "linux"}),
                &[],
            ),
        ] {
            inner.put_untagged(&desc);
        }
        let inner_bytes = inner.to_json();
        let inner_desc = Descriptor::new(
            media_type::OCI_INDEX,
            cache_core::digest::sha256(&inner_bytes),
            inner_bytes.len() as u64,
        );
        fs::write(blob_path(tmp.path(), &inner_desc.digest), &inner_bytes).unwrap();
        let mut index = read_index(tmp.path());
        index.put_tag("multi", &inner_desc);
        fs::write(tmp.path().join("index.json"), index.to_json()).unwrap();

        let read = read_layout_image(tmp.path(), "multi").unwrap();
        assert_eq!(read.manifest_digest, fixture.image.manifest.digest);
        let read = read_layout_image(tmp.path(), inner_desc.digest.as_ref()).unwrap();
        assert_eq!(read.manifest_digest, fixture.image.manifest.digest);

        // A corrupted manifest blob is detected.
        let manifest_path = blob_path(tmp.path(), &fixture.image.manifest.digest);
        fs::remove_file(&manifest_path).unwrap();
        fs::write(&manifest_path, b"{}").unwrap();
        let err = read_layout_image(tmp.path(), "single").unwrap_err();
        assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
    }

    #[test]
    fn a_cache_layout_is_refused_with_advice() {
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/buildkit/local-max");
        let fixtures = if fixtures.exists() {
            fixtures
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../shared/fixtures/buildkit/local-max")
        };
        if !fixtures.exists() {
            eprintln!("skipping: {} is absent", fixtures.display());
            return;
        }
        let index = read_index(&fixtures);
        let tag = index.entries()[0]
            .annotation(annotation::REF_NAME)
            .unwrap_or("latest")
            .to_owned();
        let err = read_layout_image(&fixtures, &tag).unwrap_err().to_string();
        assert!(err.contains("--cache-from"), "{err}");
    }

    #[test]
    fn layout_references_split_like_buildx() {
        let digest = cache_core::digest::sha256(b"x").to_string();
        for (text, dir, reference) in [
            ("oci-layout:///tmp/img", "/tmp/img", "latest"),
            ("oci-layout://./img:1.0", "./img", "1.0"),
            ("/mnt/a:b/img", "/mnt/a:b/img", "latest"),
            (&format!("img@{digest}") as &str, "img", &digest as &str),
            (&format!("img:v1@{digest}"), "img", &digest),
        ] {
            let (got_dir, got_ref) = split_layout_ref(text);
            assert_eq!(got_dir, PathBuf::from(dir), "{text}");
            assert_eq!(got_ref, reference, "{text}");
        }
    }

    /// `Some(path)` if `name` is installed; skips (or fails on CI) otherwise.
    fn tool(name: &str) -> Option<PathBuf> {
        let path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|dir| dir.join(name))
            .find(|path| path.is_file());
        if path.is_none() {
            if std::env::var_os("CI").is_some() {
                panic!("{name} must be installed on CI (Debian package {name})");
            }
            eprintln!("skipping: {name} is not installed");
        }
        path
    }

    #[test]
    fn skopeo_and_umoci_read_a_written_layout() {
        let fixture = Fixture::new(
            &["hello from layer one", "hello from layer two"],
            "/bin/app",
        );
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("layout");
        fixture.write_dir(&dir, &["app:1.0"]);

        if let Some(skopeo) = tool("skopeo") {
            let out = Command::new(&skopeo)
                .args(["inspect", "--raw"])
                .arg(format!("oci:{}:1.0", dir.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, fixture.image.manifest.bytes);
            let out = Command::new(&skopeo)
                .args(["inspect", "--config"])
                .arg(format!("oci:{}:1.0", dir.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let config: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(config["config"]["Cmd"], serde_json::json!(["/bin/app"]));
            assert_eq!(config["config"]["WorkingDir"], "/srv");
            assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);

            let archive = tmp.path().join("image.tar");
            let names = [image_names("app:1.0").unwrap()];
            let file = fs::File::create(&archive).unwrap();
            write_layout_tar(file, &fixture.image, &names, &mut fixture.opener()).unwrap();
            let out = Command::new(&skopeo)
                .args(["inspect", "--raw"])
                .arg(format!("oci-archive:{}:1.0", archive.display()))
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(out.stdout, fixture.image.manifest.bytes);
        }
        if let Some(umoci) = tool("umoci") {
            let bundle = tmp.path().join("bundle");
            let out = Command::new(&umoci)
                .args(["unpack", "--rootless", "--image"])
                .arg(format!("{}:1.0", dir.display()))
                .arg(&bundle)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(
                fs::read_to_string(bundle.join("rootfs/hello.txt")).unwrap(),
                "hello from layer two"
            );
            let runtime: serde_json::Value =
                serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
            assert_eq!(runtime["process"]["cwd"], "/srv");
            assert_eq!(runtime["process"]["args"], serde_json::json!(["/bin/app"]));
            let env = runtime["process"]["env"].as_array().unwrap();
            assert!(env.contains(&serde_json::json!("GREETING=hi")), "{env:?}");
        }
    }
}
