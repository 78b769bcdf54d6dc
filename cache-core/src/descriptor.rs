//! OCI content descriptors with deterministic JSON, and the media types and annotations of caches.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media types read and written by this crate.
pub mod media_type {
    /// The BuildKit cache configuration blob.
    pub const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image manifest, schema 2.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image config.
    pub const OCI_IMAGE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker image config.
    pub const DOCKER_IMAGE_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Uncompressed OCI layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// Gzip-compressed OCI layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// Zstd-compressed OCI layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Uncompressed Docker layer.
    pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
    /// Gzip-compressed Docker layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Zstd-compressed Docker layer (non-standard, as BuildKit writes it).
    pub const DOCKER_LAYER_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";

    /// The layer media type for the other family (OCI <-> Docker), or `None` for unknown types.
    pub fn convert_layer(media_type: &str, oci: bool) -> Option<&'static str> {
        let (oci_type, docker_type) = match media_type {
            OCI_LAYER_TAR | DOCKER_LAYER_TAR => (OCI_LAYER_TAR, DOCKER_LAYER_TAR),
            OCI_LAYER_GZIP | DOCKER_LAYER_GZIP => (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP),
            OCI_LAYER_ZSTD | DOCKER_LAYER_ZSTD => (OCI_LAYER_ZSTD, DOCKER_LAYER_ZSTD),
            "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar" => {
                (OCI_LAYER_TAR, DOCKER_LAYER_TAR)
            }
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)
            }
            _ => return None,
        };
        Some(if oci { oci_type } else { docker_type })
    }
}

/// Annotation keys used on cache layer descriptors and in `index.json`.
pub mod annotation {
    /// Creation time of a layer, RFC 3339 (BuildKit).
    pub const CREATED_AT: &str = "buildkit/createdat";
    /// Description of a layer (BuildKit).
    pub const DESCRIPTION: &str = "buildkit/description";
    /// The diffID: digest of the uncompressed layer tar (containerd).
    pub const UNCOMPRESSED: &str = "containerd.io/uncompressed";
    /// buildcache's own: on an extra blob of a cache manifest, the id of the cache mount
    /// (`RUN --mount=type=cache`) whose contents the blob holds (`cache-mounts=true`).
    pub const CACHE_MOUNT_ID: &str = "dev.buildcache.cache-mount.id";
    /// Prefix of `containerd.io/distribution.source.<host>`: repositories a blob can be mounted from.
    pub const DISTRIBUTION_SOURCE_PREFIX: &str = "containerd.io/distribution.source.";
    /// Tag name of an `index.json` entry (OCI).
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
    /// Full image name of an `index.json` entry (containerd).
    pub const IMAGE_NAME: &str = "io.containerd.image.name";
}

/// A content descriptor: what a blob is, its digest and size.
///
/// Unlike `oci_spec::image::Descriptor`, annotations are a sorted map, so the same descriptor always
/// serializes to the same bytes (manifests are addressed by the digest of those bytes).
/// Fields serialize in the order of Go's image-spec struct, which is what BuildKit writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    /// Media type; empty when a reader did not say (BuildKit's local import descriptor).
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    /// Digest of the content.
    pub digest: Digest,
    /// Size of the content in bytes.
    #[serde(default)]
    pub size: u64,
    /// Optional URLs, kept when read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
    /// Annotations, sorted by key.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Platform of the content, kept as raw JSON when read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
}

impl Descriptor {
    /// A descriptor without annotations.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Self {
            media_type: media_type.into(),
            digest,
            size,
            urls: Vec::new(),
            annotations: BTreeMap::new(),
            platform: None,
        }
    }

    /// The value of annotation `key`, if set.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }

    /// The diffID from `containerd.io/uncompressed`, if present and valid.
    pub fn diff_id(&self) -> Option<Digest> {
        self.annotation(annotation::UNCOMPRESSED)?.parse().ok()
    }
}
