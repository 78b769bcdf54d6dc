//! The three top-level forms around a cache config (spec §2): OCI image manifest, OCI index and
//! Docker manifest list; writing each deterministically and reading any of them.

use serde::{Deserialize, Serialize};

use crate::backend::RawIndex;
use crate::config::to_go_json;
use crate::descriptor::{Descriptor, media_type};

/// Which top-level object wraps the cache config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestForm {
    /// OCI image manifest whose `config` is the cache config (BuildKit's default since v0.21).
    ImageManifest,
    /// OCI image index listing the layers and then the config (`image-manifest=false`).
    OciIndex,
    /// Docker manifest list with Docker layer types (`oci-mediatypes=false`).
    DockerList,
}

impl ManifestForm {
    /// The form for the `oci-mediatypes` and `image-manifest` attributes (spec §2.1).
    ///
    /// `image_manifest` defaults to true, or to false when `oci-mediatypes=false`; asking for an
    /// image manifest with Docker media types is an error, as in BuildKit.
    pub fn from_attributes(
        oci_mediatypes: bool,
        image_manifest: Option<bool>,
    ) -> Result<Self, String> {
        match (oci_mediatypes, image_manifest.unwrap_or(oci_mediatypes)) {
            (true, true) => Ok(Self::ImageManifest),
            (true, false) => Ok(Self::OciIndex),
            (false, false) => Ok(Self::DockerList),
            (false, true) => Err(
                "image-manifest=true needs oci-mediatypes=true: OCI media types are required for the image-manifest cache format".into(),
            ),
        }
    }

    /// The media type of the top-level object.
    pub fn media_type(self) -> &'static str {
        match self {
            Self::ImageManifest => media_type::OCI_MANIFEST,
            Self::OciIndex => media_type::OCI_INDEX,
            Self::DockerList => media_type::DOCKER_LIST,
        }
    }

    /// Whether layers use OCI media types.
    pub fn is_oci(self) -> bool {
        !matches!(self, Self::DockerList)
    }

    /// A short human name.
    pub fn name(self) -> &'static str {
        match self {
            Self::ImageManifest => "image manifest",
            Self::OciIndex => "index",
            Self::DockerList => "manifest list",
        }
    }
}

#[derive(Serialize)]
struct ManifestOut<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    config: &'a Descriptor,
    layers: &'a [Descriptor],
}

#[derive(Serialize)]
struct IndexOut<'a> {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(rename = "mediaType")]
    media_type: &'a str,
    manifests: &'a [Descriptor],
}

/// Writes the top-level object for `config` and `layers` (in config order) in `form`.
///
/// Layer media types are converted to the form's family (OCI or Docker); the bytes are compact
/// JSON with Go's field order and sorted annotations.
pub fn write(form: ManifestForm, config: &Descriptor, layers: &[Descriptor]) -> RawIndex {
    let layers: Vec<Descriptor> = layers
        .iter()
        .map(|layer| {
            let mut layer = layer.clone();
            if let Some(converted) = media_type::convert_layer(&layer.media_type, form.is_oci()) {
                layer.media_type = converted.to_owned();
            }
            layer
        })
        .collect();
    let bytes = match form {
        ManifestForm::ImageManifest => to_go_json(&ManifestOut {
            schema_version: 2,
            media_type: form.media_type(),
            config,
            layers: &layers,
        }),
        ManifestForm::OciIndex | ManifestForm::DockerList => {
            let mut manifests = layers;
            manifests.push(config.clone());
            to_go_json(&IndexOut {
                schema_version: 2,
                media_type: form.media_type(),
                manifests: &manifests,
            })
        }
    };
    RawIndex::new(Some(form.media_type().to_owned()), bytes)
}

/// A cache manifest as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheManifest {
    /// The form found.
    pub form: ManifestForm,
    /// The media type: from the object itself, the caller's hint, or inferred from its shape.
    pub media_type: String,
    /// The cache config descriptor.
    pub config: Descriptor,
    /// Every other blob the object lists: the layers.
    pub layers: Vec<Descriptor>,
}

/// Why a top-level object is not a readable cache manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadError {
    /// Not JSON of the expected shape.
    #[error("invalid cache manifest {digest}: {message}")]
    Json {
        /// The manifest digest.
        digest: String,
        /// What is wrong.
        message: String,
    },
    /// Both `manifests` and `config`/`layers`.
    #[error(
        "invalid cache manifest {digest}: ambiguous object with both `manifests` and `config`/`layers`"
    )]
    Ambiguous {
        /// The manifest digest.
        digest: String,
    },
    /// The declared media type does not match the shape, or is not a manifest type.
    #[error("invalid cache manifest {digest}: media type {media_type} does not match its content")]
    MediaTypeMismatch {
        /// The manifest digest.
        digest: String,
        /// The declared type.
        media_type: String,
    },
    /// More than one descriptor of the cache config's media type: which one is the config would
    /// depend on the form the cache is read in.
    #[error(
        "invalid cache manifest {digest}: it lists more than one application/vnd.buildkit.cacheconfig.v0 blob"
    )]
    ExtraConfig {
        /// The manifest digest.
        digest: String,
    },
    /// A valid manifest without a cache config (an ordinary image, or inline cache).
    #[error(
        "{digest} is a {media_type} without a BuildKit cache config ({config}): not a cache export"
    )]
    NotACache {
        /// The manifest digest.
        digest: String,
        /// Its media type.
        media_type: String,
        /// The media type found where the config should be.
        config: String,
    },
}

#[derive(Deserialize)]
struct Shape {
    #[serde(rename = "mediaType", default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
}

/// Reads any of the three forms, detecting the type by shape when `mediaType` is absent (§2.5).
pub fn read(raw: &RawIndex) -> Result<CacheManifest, ReadError> {
    let digest = raw.digest.to_string();
    let shape: Shape = serde_json::from_slice(&raw.bytes).map_err(|err| ReadError::Json {
        digest: digest.clone(),
        message: err.to_string(),
    })?;
    let is_manifest_shape = shape.config.is_some() || shape.layers.is_some();
    if is_manifest_shape && shape.manifests.is_some() {
        return Err(ReadError::Ambiguous { digest });
    }
    let inferred = if is_manifest_shape {
        media_type::DOCKER_MANIFEST
    } else {
        media_type::DOCKER_LIST
    };
    let declared = shape
        .media_type
        .clone()
        .or_else(|| raw.media_type.clone().filter(|mt| !mt.is_empty()));
    let media_type = match declared {
        Some(mt) => {
            let fits = match mt.as_str() {
                media_type::OCI_MANIFEST | media_type::DOCKER_MANIFEST => is_manifest_shape,
                media_type::OCI_INDEX | media_type::DOCKER_LIST => !is_manifest_shape,
                _ => false,
            };
            if !fits {
                return Err(ReadError::MediaTypeMismatch {
                    digest,
                    media_type: mt,
                });
            }
            mt
        }
        None => inferred.to_owned(),
    };
    if is_manifest_shape {
        let config = shape
            .config
            .filter(|c| c.media_type == media_type::CACHE_CONFIG);
        let Some(config) = config else {
            return Err(ReadError::NotACache {
                digest,
                media_type,
                config: "no cacheconfig config descriptor".into(),
            });
        };
        let form = if media_type == media_type::OCI_MANIFEST
            || media_type == media_type::DOCKER_MANIFEST
        {
            ManifestForm::ImageManifest
        } else {
            ManifestForm::OciIndex
        };
        let layers = shape.layers.unwrap_or_default();
        if layers
            .iter()
            .any(|layer| layer.media_type == media_type::CACHE_CONFIG)
        {
            return Err(ReadError::ExtraConfig { digest });
        }
        Ok(CacheManifest {
            form,
            media_type,
            config,
            layers,
        })
    } else {
        let mut config = None;
        let mut layers = Vec::new();
        for desc in shape.manifests.unwrap_or_default() {
            if desc.media_type == media_type::CACHE_CONFIG {
                if config.is_some() {
                    return Err(ReadError::ExtraConfig { digest });
                }
                config = Some(desc);
            } else {
                layers.push(desc);
            }
        }
        let Some(config) = config else {
            return Err(ReadError::NotACache {
                digest,
                media_type,
                config: "no entry of type application/vnd.buildkit.cacheconfig.v0".into(),
            });
        };
        let form = if media_type == media_type::OCI_INDEX {
            ManifestForm::OciIndex
        } else {
            ManifestForm::DockerList
        };
        Ok(CacheManifest {
            form,
            media_type,
            config,
            layers,
        })
    }
}
