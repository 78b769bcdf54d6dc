//! The storage backend trait: content-addressed blobs plus tags naming top-level manifests.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;

use bytes::Bytes;
use futures_core::Stream;

use crate::descriptor::Descriptor;
use crate::digest::{self, Digest};

/// A stream of blob bytes. Backends produce and consume blobs as streams so memory stays flat
/// whatever the blob size.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A blob body with its size.
pub struct Blob {
    /// The size in bytes the body yields.
    pub size: u64,
    /// The bytes.
    pub body: ByteStream,
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blob").field("size", &self.size).finish()
    }
}

impl Blob {
    /// A blob whose bytes are already in memory.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let bytes: Bytes = bytes.into();
        let size = bytes.len() as u64;
        Self {
            size,
            body: Box::pin(futures_util::stream::once(async move { Ok(bytes) })),
        }
    }

    /// Reads the whole body into memory, refusing more than `limit` bytes.
    ///
    /// For manifests and configs only; layers are streamed.
    pub async fn into_bytes(self, limit: u64) -> Result<Bytes> {
        use futures_util::StreamExt;
        if self.size > limit {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "blob of {} bytes is larger than the {limit} bytes allowed here",
                    self.size
                ),
            ));
        }
        let mut body = self.body;
        let mut buf = Vec::with_capacity(self.size as usize);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|err| Error::from_io("reading blob", err))?;
            if (buf.len() + chunk.len()) as u64 > limit {
                return Err(Error::new(
                    ErrorKind::Corrupt,
                    format!("blob body is longer than the {limit} bytes allowed here"),
                ));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(buf))
    }

    /// Wraps the body so that it fails with [`ErrorKind::DigestMismatch`] (as an `io::Error`
    /// whose inner error is an [`Error`]) if its bytes do not hash to `expected` or its length
    /// differs from `size`.
    pub fn verified(self, expected: Digest) -> Blob {
        use futures_util::StreamExt;
        let size = self.size;
        let state = (self.body, digest::Hasher::new(), expected, false);
        let body = futures_util::stream::unfold(
            state,
            move |(mut body, mut hasher, expected, done)| async move {
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => {
                        hasher.update(&chunk);
                        if hasher.len() > size {
                            let err = Error::new(
                                ErrorKind::DigestMismatch,
                                format!("blob {expected} is longer than its size {size}"),
                            );
                            return Some((
                                Err(io::Error::other(err)),
                                (body, hasher, expected, true),
                            ));
                        }
                        Some((Ok(chunk), (body, hasher, expected, false)))
                    }
                    Some(Err(err)) => Some((Err(err), (body, hasher, expected, true))),
                    None => {
                        let n = hasher.len();
                        let got = hasher.clone().finish();
                        if n != size {
                            let err = Error::new(
                                ErrorKind::DigestMismatch,
                                format!("blob {expected} is {n} bytes, expected {size}"),
                            );
                            Some((Err(io::Error::other(err)), (body, hasher, expected, true)))
                        } else if got != expected {
                            let err = Error::new(
                                ErrorKind::DigestMismatch,
                                format!("blob content hashes to {got}, expected {expected}"),
                            );
                            Some((Err(io::Error::other(err)), (body, hasher, expected, true)))
                        } else {
                            None
                        }
                    }
                }
            },
        );
        Blob {
            size,
            body: Box::pin(body),
        }
    }
}

/// A top-level manifest or index as stored: its exact bytes and their digest.
///
/// It is never re-serialized: its digest is over these bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawIndex {
    /// The media type, when the backend knows it (registry `Content-Type`, `index.json` entry).
    pub media_type: Option<String>,
    /// The digest of `bytes`.
    pub digest: Digest,
    /// The exact bytes.
    pub bytes: Bytes,
}

impl RawIndex {
    /// Wraps `bytes`, computing their digest.
    pub fn new(media_type: Option<String>, bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        Self {
            media_type,
            digest: digest::sha256(&bytes),
            bytes,
        }
    }

    /// A descriptor of this object, as `index.json` or a registry names it.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor::new(
            self.media_type.clone().unwrap_or_default(),
            self.digest.clone(),
            self.bytes.len() as u64,
        )
    }
}

/// Which manifest a read or write of the index addresses: a tag, or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IndexRef {
    /// A tag (`latest` in an OCI layout, the tag of a registry reference).
    Tag(String),
    /// A manifest digest.
    Digest(Digest),
}

impl fmt::Display for IndexRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexRef::Tag(tag) => write!(f, "tag {tag}"),
            IndexRef::Digest(digest) => write!(f, "digest {digest}"),
        }
    }
}

/// Which backend this is and where it points, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// `oci-layout` or `registry`.
    pub scheme: &'static str,
    /// The directory or the repository reference.
    pub location: String,
}

impl fmt::Display for BackendInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.scheme, self.location)
    }
}

/// What a backend can do, as data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Blobs and tags can be written.
    pub write: bool,
    /// Blobs can be mounted from another repository of the same registry.
    pub cross_repo_mount: bool,
    /// Blobs can be deleted (garbage collection).
    pub delete: bool,
    /// The largest blob the backend accepts, if limited.
    pub max_blob_size: Option<u64>,
}

/// A repository blobs can be mounted from: a registry host and a repository on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MountSource {
    /// The registry host, as references name it (`127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// The repository on that registry.
    pub repository: String,
}

impl fmt::Display for MountSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repository)
    }
}

/// Content-addressed blobs plus tags naming top-level manifests.
///
/// Every method is explicit: wrappers (retry, read-only, logging) must forward each one.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Names the backend for messages.
    fn info(&self) -> BackendInfo;

    /// What the backend supports.
    fn capabilities(&self) -> Capabilities;

    /// The descriptor of blob `digest` (media type may be empty), or `None` if absent.
    ///
    /// Behavior:
    /// - absence is `Ok(None)`, never an error;
    /// - nothing is verified beyond existence and size.
    fn stat_blob(&self, digest: &Digest)
    -> impl Future<Output = Result<Option<Descriptor>>> + Send;

    /// The bytes of blob `digest`, or `None` if absent.
    ///
    /// Behavior:
    /// - absence is `Ok(None)`;
    /// - the stream fails with [`ErrorKind::DigestMismatch`] if the bytes do not match `digest`
    ///   (backends verify while streaming; see [`Blob::verified`]).
    fn read_blob(&self, digest: &Digest) -> impl Future<Output = Result<Option<Blob>>> + Send;

    /// Stores `body` as the blob described by `desc`.
    ///
    /// Behavior:
    /// - idempotent: an existing blob with this digest is success, and the body may be left unread;
    /// - the digest and size are verified before the blob becomes visible; a mismatch is
    ///   [`ErrorKind::DigestMismatch`] and nothing is stored;
    /// - a backend without `write` capability returns [`ErrorKind::Unsupported`].
    fn write_blob(&self, desc: &Descriptor, body: Blob) -> impl Future<Output = Result<()>> + Send;

    /// The top-level manifest named by `reference`, or `None` if there is none.
    ///
    /// Behavior: absence (no such tag or digest, or no cache at all) is `Ok(None)`.
    fn read_index(
        &self,
        reference: &IndexRef,
    ) -> impl Future<Output = Result<Option<RawIndex>>> + Send;

    /// Stores `index` and points tag `tag` at it, replacing what the tag named before.
    ///
    /// Behavior:
    /// - the blobs `index` refers to must already be stored;
    /// - atomic: a reader sees the old or the new manifest, never a mix;
    /// - other tags are kept.
    fn write_index(&self, tag: &str, index: &RawIndex) -> impl Future<Output = Result<()>> + Send;

    /// Where another backend could mount this one's blobs from (a registry repository), or
    /// `None` when they cannot be mounted.
    fn mount_source(&self) -> Option<MountSource>;

    /// Makes blob `desc` present by mounting it from `from`, without sending its bytes.
    ///
    /// Behavior:
    /// - `Ok(true)`: mounted; `Ok(false)`: not possible (another registry, the same repository,
    ///   the blob is not there, the registry refused), and nothing changed;
    /// - a backend without `cross_repo_mount` capability returns `Ok(false)` and sends nothing.
    fn mount_blob_from(
        &self,
        desc: &Descriptor,
        from: &MountSource,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Reads blob `digest`, turning absence into [`ErrorKind::NotFound`].
pub async fn require_blob<B: Backend>(backend: &B, digest: &Digest) -> Result<Blob> {
    match backend.read_blob(digest).await? {
        Some(blob) => Ok(blob),
        None => Err(Error::new(
            ErrorKind::NotFound,
            format!("blob {digest} not found in {}", backend.info()),
        )),
    }
}

/// How many times [`crate::transfer::write_blob_restarting`] tries one blob by default.
pub const WRITE_ATTEMPTS: u32 = 5;

/// The kind of a backend failure.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// The object does not exist.
    NotFound,
    /// The object exists and may not be replaced.
    AlreadyExists,
    /// Content does not match its digest or size.
    DigestMismatch,
    /// Credentials are missing or wrong.
    Unauthorized,
    /// The credentials do not allow this.
    Denied,
    /// The backend asks us to slow down.
    RateLimited,
    /// The backend cannot do this.
    Unsupported,
    /// The configuration is invalid.
    InvalidConfig,
    /// Stored data is malformed.
    Corrupt,
    /// Anything else.
    Unexpected,
}

/// A backend failure: a kind, a message naming the object, context, and the cause.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: Vec<(&'static str, String)>,
    temporary: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Result of backend operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            context: Vec::new(),
            temporary: false,
            source: None,
        }
    }

    /// Maps an I/O error, keeping it as the source; `what` says what was being done.
    ///
    /// An `io::Error` wrapping an [`Error`] (as streams carry them) yields that error's kind.
    pub fn from_io(what: impl Into<String>, err: io::Error) -> Self {
        let kind = match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<Error>())
        {
            Some(inner) => inner.kind,
            None => match err.kind() {
                io::ErrorKind::NotFound => ErrorKind::NotFound,
                io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
                io::ErrorKind::PermissionDenied => ErrorKind::Denied,
                io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
                _ => ErrorKind::Unexpected,
            },
        };
        let temporary = matches!(
            err.kind(),
            io::ErrorKind::Interrupted
                | io::ErrorKind::TimedOut
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe
        );
        Self::new(kind, what)
            .with_source(err)
            .set_temporary(temporary)
    }

    /// Adds a context pair such as `("digest", "sha256:…")`.
    pub fn with_context(mut self, key: &'static str, value: impl Into<String>) -> Self {
        self.context.push((key, value.into()));
        self
    }

    /// Sets the underlying cause.
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Marks whether retrying may succeed.
    pub fn set_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Whether retrying may succeed (rate limits, 5xx, broken connections).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.context.is_empty() {
            f.write_str(" (")?;
            for (i, (key, value)) in self.context.iter().enumerate() {
                if i > 0 {
                    f.write_str(", ")?;
                }
                write!(f, "{key}: {value}")?;
            }
            f.write_str(")")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|err| err as &(dyn std::error::Error + 'static))
    }
}
