//! The `Registry` backend: one repository on one registry, its options and statistics.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use cache_core::backend::{BackendInfo, Capabilities};
use cache_core::{
    Backend, Blob, Descriptor, Digest, Error, ErrorKind, IndexRef, MountSource, RawIndex,
};
use reqwest::Url;

use crate::auth::Credentials;
use crate::client::{ClientOptions, Shared};
use crate::error::Action;
use crate::reference::ImageRef;
use crate::retry::RetryPolicy;

/// Knobs of a [`Registry`]; [`Options::new`] gives the defaults.
#[derive(Clone, Debug)]
pub struct Options {
    /// `registry.insecure=true`: allow plain HTTP and skip TLS certificate verification.
    /// Loopback registries (`localhost`, `127.0.0.0/8`, `::1`) may use plain HTTP regardless.
    pub insecure: bool,
    /// Blob uploads running at once, over all repositories sharing this registry (default 4).
    pub max_parallel_uploads: usize,
    /// `Some(n)`: blobs larger than `n` bytes are uploaded in `PATCH` chunks of `n` bytes (each
    /// chunk is buffered in memory and retried on its own). `None` (default): one streamed `PUT`.
    pub chunk_size: Option<u64>,
    /// How long a request may make no progress (no response to a request, no byte of a body
    /// read or written) before it fails as a temporary error; whole transfers have no limit,
    /// as big blobs take long. Default 30 s.
    pub timeout: Duration,
    /// Limit for establishing a connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Where credentials come from (default: Docker's `config.json`).
    pub credentials: Credentials,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Retries of a failed request after the first attempt (default 5). Only temporary failures
    /// (429, 5xx, broken connections, timeouts) are retried.
    pub max_retries: u32,
    /// The delay before the first retry, doubled for each further one up to 10 s, with jitter
    /// (default 250 ms). A `Retry-After` header overrides it.
    pub retry_base_delay: Duration,
}

impl Options {
    /// The defaults: verified TLS, 4 parallel uploads, monolithic uploads, 30 s stall
    /// timeout, 10 s connect timeout, credentials from Docker's config, 5 retries from 250 ms.
    pub fn new() -> Self {
        Options {
            insecure: false,
            max_parallel_uploads: 4,
            chunk_size: None,
            timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            credentials: Credentials::FromDockerConfig,
            user_agent: format!("buildcache/{}", env!("CARGO_PKG_VERSION")),
            max_retries: 5,
            retry_base_delay: Duration::from_millis(250),
        }
    }
}

impl Default for Options {
    fn default() -> Self {
        Options::new()
    }
}

/// Counts of requests made so far, shared by every [`Registry`] made with
/// [`Registry::with_repository`] from the same origin.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Blob `HEAD` requests (existence checks).
    pub blobs_headed: u64,
    /// Blobs uploaded (not counting mounts and blobs that were already present).
    pub blobs_uploaded: u64,
    /// Bytes of uploaded blobs.
    pub bytes_uploaded: u64,
    /// Blobs mounted from another repository.
    pub blobs_mounted: u64,
    /// Blob downloads started.
    pub blobs_downloaded: u64,
    /// Blob bytes received.
    pub bytes_downloaded: u64,
    /// Manifests fetched (`GET` or `HEAD`).
    pub manifests_fetched: u64,
    /// Manifests stored.
    pub manifests_put: u64,
    /// Requests sent again after a temporary failure.
    pub retries: u64,
    /// Bearer tokens fetched.
    pub tokens_fetched: u64,
    /// HTTP requests sent to the registry (retries included; token requests not), by method.
    pub requests: RequestCounts,
}

/// Requests sent, by method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `GET` requests.
    pub get: u64,
    /// `HEAD` requests.
    pub head: u64,
    /// `POST` requests.
    pub post: u64,
    /// `PUT` requests.
    pub put: u64,
    /// `PATCH` requests.
    pub patch: u64,
    /// `DELETE` requests.
    pub delete: u64,
    /// Requests with any other method.
    pub other: u64,
}

impl RequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.get + self.head + self.post + self.put + self.patch + self.delete + self.other
    }
}

/// One repository on one registry, implementing [`cache_core::Backend`] over the OCI
/// distribution API.
///
/// Cloning is cheap; clones and [`Registry::with_repository`] share the connection pool,
/// credentials, token cache, upload limit and [`Stats`].
#[derive(Clone)]
pub struct Registry {
    pub(crate) shared: Arc<Shared>,
    pub(crate) reference: ImageRef,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("reference", &self.reference.to_string())
            .finish()
    }
}

impl Registry {
    /// Opens the repository named by `reference`, as users type it: `127.0.0.1:5000/app:cache`,
    /// `app` (`docker.io/library/app:latest`), `host/repo@sha256:…`. Docker's normalisation
    /// applies and the tag defaults to `latest`.
    ///
    /// Nothing is sent yet: the registry is contacted on the first operation.
    /// Errors: [`ErrorKind::InvalidConfig`] for a malformed reference or an unusable option.
    pub fn new(reference: &str, options: Options) -> Result<Registry, Error> {
        let reference = ImageRef::parse(reference)?;
        let timeout = options.timeout.max(Duration::from_millis(1));
        let client_options = ClientOptions {
            user_agent: options.user_agent.clone(),
            connect_timeout: options.connect_timeout.max(Duration::from_millis(1)),
            insecure: options.insecure,
        };
        let policy = RetryPolicy {
            max_retries: options.max_retries,
            base_delay: options.retry_base_delay,
            max_delay: Duration::from_secs(10),
        };
        let shared = Shared::new(
            client_options,
            timeout,
            reference.registry().to_string(),
            reference.api_host().to_string(),
            options.insecure || reference.is_loopback(),
            options.credentials,
            policy,
            options.chunk_size.filter(|size| *size > 0),
            options.max_parallel_uploads,
        )?;
        let shared = Arc::new(shared);
        if !(options.insecure || reference.is_loopback()) {
            // Loading the platform's TLS roots takes a while: start it now, off the path of the
            // first request (on a blocking thread, when a runtime is there to run it).
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let warm = Arc::clone(&shared);
                let api_host = reference.api_host().to_string();
                runtime.spawn_blocking(move || {
                    if let Ok(url) = Url::parse(&format!("https://{api_host}/")) {
                        let _ = warm.client(&url);
                    }
                });
            }
        }
        Ok(Registry { shared, reference })
    }

    /// Another repository or tag of the same registry, as users type it, sharing this one's
    /// connection pool, credentials, token cache, upload limit and [`Stats`].
    ///
    /// Errors: [`ErrorKind::InvalidConfig`] for a malformed reference or one naming another
    /// registry.
    pub fn for_reference(&self, reference: &str) -> Result<Registry, Error> {
        let parsed = ImageRef::parse(reference)?;
        if parsed.registry() != self.reference.registry() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{reference} is not on registry {}; open it with Registry::new",
                    self.reference.registry()
                ),
            ));
        }
        Ok(Registry {
            shared: Arc::clone(&self.shared),
            reference: parsed,
        })
    }

    /// The reference this registry was opened with (registry host, repository, tag, digest).
    pub fn reference(&self) -> &ImageRef {
        &self.reference
    }

    /// The same registry, credentials and token cache, another repository (for mounts and
    /// image pulls). The new value has no tag or digest.
    pub fn with_repository(&self, repository: &str) -> Registry {
        Registry {
            shared: Arc::clone(&self.shared),
            reference: self.reference.with_repository(repository),
        }
    }

    /// Counts of requests made so far.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.stats;
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            blobs_headed: get(&c.blobs_headed),
            blobs_uploaded: get(&c.blobs_uploaded),
            bytes_uploaded: get(&c.bytes_uploaded),
            blobs_mounted: get(&c.blobs_mounted),
            blobs_downloaded: get(&c.blobs_downloaded),
            bytes_downloaded: get(&c.bytes_downloaded),
            manifests_fetched: get(&c.manifests_fetched),
            manifests_put: get(&c.manifests_put),
            retries: get(&c.retries),
            tokens_fetched: get(&c.tokens_fetched),
            requests: RequestCounts {
                get: get(&c.requests[0]),
                head: get(&c.requests[1]),
                post: get(&c.requests[2]),
                put: get(&c.requests[3]),
                patch: get(&c.requests[4]),
                delete: get(&c.requests[5]),
                other: get(&c.requests[6]),
            },
        }
    }

    /// `/v2/<repository>/<rest>` on the registry.
    pub(crate) async fn url(&self, rest: &str) -> Result<Url, Error> {
        let base = self.shared.base().await?;
        let path = format!("v2/{}/{rest}", self.reference.repository());
        base.join(&path).map_err(|err| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "invalid URL {path:?} for registry {}: {err}",
                    self.shared.host
                ),
            )
        })
    }

    /// Describes an operation for error messages.
    pub(crate) fn action<'a>(&'a self, what: &'a str, target: &'a str) -> Action<'a> {
        Action {
            host: &self.shared.host,
            what,
            target,
        }
    }

    /// `repository@digest`, how messages name a blob.
    pub(crate) fn blob_target(&self, digest: &Digest) -> String {
        format!("{}@{digest}", self.reference.repository())
    }
}

impl Backend for Registry {
    fn info(&self) -> BackendInfo {
        BackendInfo {
            scheme: "registry",
            location: self.reference.to_string(),
        }
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            write: true,
            cross_repo_mount: true,
            delete: false,
            max_blob_size: None,
        }
    }

    /// This repository on this registry.
    fn mount_source(&self) -> Option<MountSource> {
        Some(MountSource {
            registry: self.reference.registry().to_owned(),
            repository: self.reference.repository().to_owned(),
        })
    }

    /// A cross-repository mount ([`Registry::mount_blob`]) when `from` is another repository
    /// of this registry; nothing is sent otherwise.
    async fn mount_blob_from(&self, desc: &Descriptor, from: &MountSource) -> Result<bool, Error> {
        if from.registry != self.reference.registry()
            || from.repository == self.reference.repository()
        {
            return Ok(false);
        }
        self.mount_blob(&desc.digest, &from.repository).await
    }

    /// `HEAD` on the blob: its size, with an empty media type.
    async fn stat_blob(&self, digest: &Digest) -> Result<Option<Descriptor>, Error> {
        self.head_blob(digest).await
    }

    /// `GET` on the blob, following redirects to storage (credentials are not sent to other
    /// hosts); the stream is checked against `digest` and the size while it is read.
    async fn read_blob(&self, digest: &Digest) -> Result<Option<Blob>, Error> {
        self.get_blob(digest).await
    }

    /// `HEAD` first (present: done, body unread); then a cross-repository mount if the
    /// descriptor has `containerd.io/distribution.source.<this registry>`; else an upload
    /// (one streamed `PUT`, or `PATCH` chunks when [`Options::chunk_size`] says so).
    ///
    /// A streamed `PUT` is retried only if the failure came before any byte was read; the
    /// error stays temporary, so a caller that can re-create the body may retry the call.
    async fn write_blob(&self, desc: &Descriptor, body: Blob) -> Result<(), Error> {
        self.put_blob(desc, body).await
    }

    /// `GET` on the manifest with an `Accept` for OCI and Docker manifests and indexes.
    async fn read_index(&self, reference: &IndexRef) -> Result<Option<RawIndex>, Error> {
        self.get_manifest(reference).await
    }

    /// `PUT` of the manifest under `tag`; a missing media type is taken from the JSON.
    async fn write_index(&self, tag: &str, index: &RawIndex) -> Result<(), Error> {
        if index.media_type.is_some() {
            return self.put_manifest(tag, index).await;
        }
        let mut index = index.clone();
        index.media_type = Some(crate::manifest::sniff_media_type(&index.bytes).to_string());
        self.put_manifest(tag, &index).await
    }
}
