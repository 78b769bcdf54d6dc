//! Blob `HEAD`, streamed download, cross-repository mount and uploads (monolithic and chunked).

use std::io;

use bytes::{Bytes, BytesMut};
use cache_core::descriptor::annotation::DISTRIBUTION_SOURCE_PREFIX;
use cache_core::{Blob, Descriptor, Digest, Error, ErrorKind};
use futures_util::StreamExt;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION, RANGE};
use reqwest::{Method, Response, Url};

use crate::auth::{pull_scope, push_scope};
use crate::client::{Body, Counters, Request, StreamBody};
use crate::manifest::DOCKER_CONTENT_DIGEST;
use crate::registry::Registry;

/// What a mount attempt gave.
enum Mount {
    /// The blob is now in the repository.
    Mounted,
    /// The registry opened an upload session instead (202): its URL.
    Session(Url),
    /// Not possible (401, 403, 404).
    NotPossible,
}

impl Registry {
    /// `HEAD` on blob `digest`: its size, or `None` if absent.
    pub(crate) async fn head_blob(&self, digest: &Digest) -> Result<Option<Descriptor>, Error> {
        let target = self.blob_target(digest);
        let req = Request {
            action: self.action("HEAD blob", &target),
            method: Method::HEAD,
            url: self.url(&format!("blobs/{digest}")).await?,
            headers: Vec::new(),
            body: Body::Empty,
            scopes: vec![pull_scope(self.reference.repository())],
            accept: &[200, 404],
        };
        Counters::add(&self.shared.stats.blobs_headed, 1);
        let resp = self.shared.call(&req).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let size = header_u64(&resp, CONTENT_LENGTH.as_str()).ok_or_else(|| {
            Error::new(
                ErrorKind::Unexpected,
                format!(
                    "registry {} answered HEAD blob {target} without a Content-Length",
                    self.shared.host
                ),
            )
        })?;
        Ok(Some(Descriptor::new("", digest.clone(), size)))
    }

    /// `GET` on blob `digest` as a stream checked against the digest and size.
    ///
    /// A body that breaks off or stalls part-way is resumed where it stopped (`Range`, or from
    /// the start skipping what was read when the registry ignores ranges), up to the retry
    /// limit; the digest check covers the joined body.
    pub(crate) async fn get_blob(&self, digest: &Digest) -> Result<Option<Blob>, Error> {
        let Some(resp) = self.open_blob_at(digest, 0).await? else {
            return Ok(None);
        };
        let size = match resp.content_length() {
            Some(size) => size,
            // Chunked transfer: ask for the size separately.
            None => match self.head_blob(digest).await? {
                Some(desc) => desc.size,
                None => return Ok(None),
            },
        };
        Counters::add(&self.shared.stats.blobs_downloaded, 1);
        let download = Download {
            registry: self.clone(),
            digest: digest.clone(),
            body: Box::pin(resp.bytes_stream()),
            received: 0,
            skip: 0,
            resumes: 0,
            done: false,
        };
        let body = futures_util::stream::unfold(download, |mut download| async move {
            if download.done {
                return None;
            }
            let item = download.next().await;
            match item {
                Some(Ok(bytes)) => Some((Ok(bytes), download)),
                Some(Err(err)) => {
                    download.done = true;
                    Some((Err(io::Error::other(err)), download))
                }
                None => None,
            }
        });
        Ok(Some(
            Blob {
                size,
                body: Box::pin(body),
            }
            .verified(digest.clone()),
        ))
    }

    /// `GET` on blob `digest` from byte `offset` on (a `Range` request unless 0): the
    /// response, whose body starts at `offset` (206) or at 0 (200); `None` if absent.
    async fn open_blob_at(&self, digest: &Digest, offset: u64) -> Result<Option<Response>, Error> {
        let target = self.blob_target(digest);
        let mut headers = Vec::new();
        if offset > 0 {
            headers.push((
                RANGE,
                HeaderValue::from_str(&format!("bytes={offset}-"))
                    .expect("a numeric range is a valid header value"),
            ));
        }
        let req = Request {
            action: self.action("GET blob", &target),
            method: Method::GET,
            url: self.url(&format!("blobs/{digest}")).await?,
            headers,
            body: Body::Empty,
            scopes: vec![pull_scope(self.reference.repository())],
            accept: &[200, 206, 404],
        };
        let resp = self.shared.call(&req).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        Ok(Some(resp))
    }

    /// Mounts blob `digest` from `from_repository` of the same registry.
    ///
    /// Returns `Ok(true)` if mounted, `Ok(false)` if the registry cannot (202, 401, 403, 404):
    /// the caller uploads instead. An upload session opened by a 202 is cancelled.
    pub async fn mount_blob(&self, digest: &Digest, from_repository: &str) -> Result<bool, Error> {
        match self.try_mount(digest, from_repository).await? {
            Mount::Mounted => Ok(true),
            Mount::Session(session) => {
                self.cancel_upload(session).await;
                Ok(false)
            }
            Mount::NotPossible => Ok(false),
        }
    }

    async fn try_mount(&self, digest: &Digest, from_repository: &str) -> Result<Mount, Error> {
        let target = self.blob_target(digest);
        let mut url = self.url("blobs/uploads/").await?;
        url.query_pairs_mut()
            .append_pair("mount", digest.as_ref())
            .append_pair("from", from_repository);
        let what = format!("mount from {from_repository} of blob");
        let req = Request {
            action: self.action(&what, &target),
            method: Method::POST,
            url,
            headers: vec![(CONTENT_LENGTH, HeaderValue::from_static("0"))],
            body: Body::Empty,
            scopes: vec![
                push_scope(self.reference.repository()),
                pull_scope(from_repository),
            ],
            accept: &[201, 202, 401, 403, 404],
        };
        let resp = self.shared.call(&req).await?;
        match resp.status().as_u16() {
            201 => {
                Counters::add(&self.shared.stats.blobs_mounted, 1);
                tracing::debug!(blob = %digest, from = from_repository, "mounted blob");
                Ok(Mount::Mounted)
            }
            202 => match self.location(&resp, &target) {
                Ok(session) => Ok(Mount::Session(session)),
                Err(_) => Ok(Mount::NotPossible),
            },
            _ => Ok(Mount::NotPossible),
        }
    }

    /// Best-effort `DELETE` of an upload session nobody will finish.
    async fn cancel_upload(&self, session: Url) {
        let target = format!("{} upload session", self.reference.repository());
        let req = Request {
            action: self.action("DELETE", &target),
            method: Method::DELETE,
            url: session,
            headers: Vec::new(),
            body: Body::Empty,
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[200, 202, 204, 404],
        };
        if let Err(err) = self.shared.call(&req).await {
            tracing::debug!(error = %err, "cancelling an upload session failed");
        }
    }

    /// `write_blob`: HEAD, mount, or upload.
    pub(crate) async fn put_blob(&self, desc: &Descriptor, body: Blob) -> Result<(), Error> {
        let digest = &desc.digest;
        let target = self.blob_target(digest);
        if body.size != desc.size {
            return Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "blob {target} has {} bytes but its descriptor says {}",
                    body.size, desc.size
                ),
            ));
        }
        match self.head_blob(digest).await? {
            Some(found) if found.size == desc.size => return Ok(()),
            Some(found) => tracing::warn!(
                blob = %digest,
                registry_size = found.size,
                size = desc.size,
                "the registry lists the blob with the wrong size; uploading it"
            ),
            None => {}
        }
        let _permit = self
            .shared
            .uploads
            .acquire()
            .await
            .map_err(|_| Error::new(ErrorKind::Unexpected, "the upload limiter was closed"))?;
        let mut session = None;
        let key = format!("{DISTRIBUTION_SOURCE_PREFIX}{}", self.shared.host);
        if let Some(sources) = desc.annotation(&key) {
            for source in sources.split(',').map(str::trim) {
                if source.is_empty() || source == self.reference.repository() {
                    continue;
                }
                match self.try_mount(digest, source).await? {
                    Mount::Mounted => return Ok(()),
                    Mount::Session(url) => {
                        // Keep the first session for the upload; later ones are not needed.
                        match session {
                            None => session = Some(url),
                            Some(_) => self.cancel_upload(url).await,
                        }
                    }
                    Mount::NotPossible => {}
                }
            }
        }
        let session = match session {
            Some(url) => url,
            None => self.start_upload(&target).await?,
        };
        let uploaded = match self.shared.chunk_size {
            Some(chunk) if desc.size > chunk => {
                self.upload_chunked(session, desc, body, chunk, &target)
                    .await
            }
            _ => self.upload_monolithic(session, desc, body, &target).await,
        };
        if let Err(err) = uploaded {
            // The upload may have landed with its answer lost.
            if let Ok(Some(found)) = self.head_blob(digest).await
                && found.size == desc.size
            {
                tracing::debug!(blob = %digest, error = %err, "upload answer lost, but the blob is there");
            } else if err.kind() == ErrorKind::NotFound {
                // The upload session is gone: a new one may work.
                return Err(err.set_temporary(true));
            } else {
                return Err(err);
            }
        }
        Counters::add(&self.shared.stats.blobs_uploaded, 1);
        Counters::add(&self.shared.stats.bytes_uploaded, desc.size);
        Ok(())
    }

    /// `POST` a new upload session; its URL.
    async fn start_upload(&self, target: &str) -> Result<Url, Error> {
        let req = Request {
            action: self.action("POST upload of blob", target),
            method: Method::POST,
            url: self.url("blobs/uploads/").await?,
            headers: vec![(CONTENT_LENGTH, HeaderValue::from_static("0"))],
            body: Body::Empty,
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[202],
        };
        let resp = self.shared.call(&req).await?;
        self.location(&resp, target)
    }

    /// One streamed `PUT` of the whole blob with `Content-Length` set.
    async fn upload_monolithic(
        &self,
        session: Url,
        desc: &Descriptor,
        body: Blob,
        target: &str,
    ) -> Result<(), Error> {
        let url = with_digest(session, &desc.digest);
        let req = Request {
            action: self.action("PUT upload of blob", target),
            method: Method::PUT,
            url,
            headers: vec![
                (
                    CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (CONTENT_LENGTH, HeaderValue::from(desc.size)),
            ],
            body: Body::Stream(StreamBody::new(sized(body.body, desc.size, target))),
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[201, 204],
        };
        let resp = self.shared.call(&req).await?;
        self.check_blob_digest(&resp, &desc.digest, target)
    }

    /// `PATCH` chunks of `chunk` bytes (each retried on its own), then a closing `PUT`.
    async fn upload_chunked(
        &self,
        mut session: Url,
        desc: &Descriptor,
        body: Blob,
        chunk: u64,
        target: &str,
    ) -> Result<(), Error> {
        let chunk = usize::try_from(chunk).unwrap_or(usize::MAX);
        let mut stream = sized(body.body, desc.size, target);
        let mut buffer = BytesMut::new();
        let mut offset = 0u64;
        let mut done = false;
        while !done {
            while buffer.len() < chunk {
                match stream.next().await {
                    Some(Ok(bytes)) => buffer.extend_from_slice(&bytes),
                    Some(Err(err)) => {
                        return Err(Error::from_io(
                            format!("reading blob {target} for upload failed"),
                            err,
                        ));
                    }
                    None => {
                        done = true;
                        break;
                    }
                }
            }
            while buffer.len() >= chunk || (done && !buffer.is_empty()) {
                let take = buffer.len().min(chunk);
                let part = buffer.split_to(take).freeze();
                session = self.patch(session, part, offset, target).await?;
                offset += take as u64;
            }
        }
        let req = Request {
            action: self.action("PUT upload of blob", target),
            method: Method::PUT,
            url: with_digest(session, &desc.digest),
            headers: vec![(CONTENT_LENGTH, HeaderValue::from_static("0"))],
            body: Body::Empty,
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[201, 204],
        };
        let resp = self.shared.call(&req).await?;
        self.check_blob_digest(&resp, &desc.digest, target)
    }

    /// `PATCH` of `part` at `offset`; the session URL for the next request.
    ///
    /// A failed `PATCH` resumes from what the registry says it has (`GET` on the session,
    /// `Range`), so bytes it received are not sent twice.
    async fn patch(
        &self,
        mut session: Url,
        part: Bytes,
        offset: u64,
        target: &str,
    ) -> Result<Url, Error> {
        let end = offset + part.len() as u64;
        let mut from = offset;
        let mut retries = 0;
        loop {
            let range = HeaderValue::from_str(&format!("{from}-{}", end - 1))
                .expect("a numeric range is a valid header value");
            let rest = part.slice((from - offset) as usize..);
            let req = Request {
                action: self.action("PATCH upload of blob", target),
                method: Method::PATCH,
                url: session.clone(),
                headers: vec![
                    (
                        CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    ),
                    (CONTENT_LENGTH, HeaderValue::from(rest.len())),
                    (reqwest::header::CONTENT_RANGE, range),
                ],
                body: Body::Bytes(rest),
                scopes: vec![push_scope(self.reference.repository())],
                accept: &[202],
            };
            let fail = match self.shared.call_once(&req).await {
                Ok(resp) => return self.location(&resp, target),
                Err(fail) => fail,
            };
            let policy = self.shared.policy;
            if !fail.error.is_temporary() || retries >= policy.max_retries {
                return Err(fail.error);
            }
            let delay = policy.delay(retries, fail.retry_after);
            retries += 1;
            Counters::add(&self.shared.stats.retries, 1);
            tokio::time::sleep(delay).await;
            let Some((url, received)) = self.upload_status(&session, target).await? else {
                return Err(fail.error);
            };
            if received < offset || received > end {
                // The session lost acknowledged bytes: the caller restarts the blob.
                return Err(fail.error);
            }
            tracing::debug!(
                blob = target,
                from = received,
                ?delay,
                "resuming a chunked upload"
            );
            session = url;
            if received == end {
                return Ok(session);
            }
            from = received;
        }
    }

    /// `GET` on an upload session: its URL for the next request and how many bytes the
    /// registry has (from `Range: 0-N`); `None` if the session is gone.
    async fn upload_status(
        &self,
        session: &Url,
        target: &str,
    ) -> Result<Option<(Url, u64)>, Error> {
        let req = Request {
            action: self.action("GET upload status of blob", target),
            method: Method::GET,
            url: session.clone(),
            headers: Vec::new(),
            body: Body::Empty,
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[204, 404],
        };
        let resp = self.shared.call(&req).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let received = resp
            .headers()
            .get(RANGE)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once('-'))
            .and_then(|(_, last)| last.trim().parse::<u64>().ok())
            .map_or(0, |last| last + 1);
        let url = self
            .location(&resp, target)
            .unwrap_or_else(|_| session.clone());
        Ok(Some((url, received)))
    }

    /// The absolute upload URL from a `Location` header (relative ones resolve against the
    /// request URL).
    fn location(&self, resp: &Response, target: &str) -> Result<Url, Error> {
        let missing = || {
            Error::new(
                ErrorKind::Unexpected,
                format!(
                    "registry {} answered {} for blob {target} without a valid Location header",
                    self.shared.host,
                    resp.status()
                ),
            )
        };
        let location = resp
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(missing)?;
        resp.url().join(location).map_err(|_| missing())
    }

    /// Checks a `Docker-Content-Digest` answer to a finished upload.
    fn check_blob_digest(
        &self,
        resp: &Response,
        digest: &Digest,
        target: &str,
    ) -> Result<(), Error> {
        match resp
            .headers()
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|value| value.to_str().ok())
        {
            Some(header) if header.starts_with("sha256:") && header != digest.as_ref() => {
                Err(Error::new(
                    ErrorKind::DigestMismatch,
                    format!(
                        "registry {} stored blob {target} as {header}",
                        self.shared.host
                    ),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// A blob download that resumes where its body broke off.
struct Download {
    registry: Registry,
    digest: Digest,
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<Bytes>> + Send>>,
    /// Bytes handed out so far.
    received: u64,
    /// Bytes of the current body to drop (a resumed body the registry sent from the start).
    skip: u64,
    /// Resumptions so far.
    resumes: u32,
    done: bool,
}

impl Download {
    /// The next piece of the blob: from the current body, or from a resumed one when it broke
    /// off or stalled.
    async fn next(&mut self) -> Option<Result<Bytes, Error>> {
        let shared = std::sync::Arc::clone(&self.registry.shared);
        loop {
            let failure = match tokio::time::timeout(shared.timeout, self.body.next()).await {
                Ok(None) => return None,
                Ok(Some(Ok(mut bytes))) => {
                    if self.skip > 0 {
                        let drop = self.skip.min(bytes.len() as u64);
                        self.skip -= drop;
                        bytes = bytes.slice(drop as usize..);
                        if bytes.is_empty() {
                            continue;
                        }
                    }
                    self.received += bytes.len() as u64;
                    Counters::add(&shared.stats.bytes_downloaded, bytes.len() as u64);
                    return Some(Ok(bytes));
                }
                Ok(Some(Err(err))) => format!("broke off: {}", crate::error::chain(&err)),
                Err(_) => format!("stalled for {:.1} s", shared.timeout.as_secs_f64()),
            };
            let target = self.registry.blob_target(&self.digest);
            let error = || {
                Error::new(
                    ErrorKind::Unexpected,
                    format!(
                        "download of blob {target} from registry {} {failure} after {} bytes",
                        shared.host, self.received
                    ),
                )
                .set_temporary(true)
            };
            if self.resumes >= shared.policy.max_retries {
                return Some(Err(error()));
            }
            let delay = shared.policy.delay(self.resumes, None);
            tracing::debug!(blob = %self.digest, received = self.received, ?delay, "resuming a broken blob download");
            self.resumes += 1;
            Counters::add(&shared.stats.retries, 1);
            tokio::time::sleep(delay).await;
            match self
                .registry
                .open_blob_at(&self.digest, self.received)
                .await
            {
                Ok(Some(resp)) => {
                    self.skip = if resp.status().as_u16() == 206 {
                        0
                    } else {
                        self.received
                    };
                    self.body = Box::pin(resp.bytes_stream());
                }
                Ok(None) => {
                    return Some(Err(Error::new(
                        ErrorKind::NotFound,
                        format!(
                            "blob {target} vanished from registry {} during its download",
                            shared.host
                        ),
                    )));
                }
                Err(err) => return Some(Err(err)),
            }
        }
    }
}

/// Adds `digest=<digest>` to an upload URL, keeping its other query parameters.
fn with_digest(mut url: Url, digest: &Digest) -> Url {
    url.query_pairs_mut().append_pair("digest", digest.as_ref());
    url
}

fn header_u64(resp: &Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Fails the stream if it yields more or fewer bytes than `size`.
fn sized(
    body: cache_core::backend::ByteStream,
    size: u64,
    target: &str,
) -> cache_core::backend::ByteStream {
    let target = target.to_string();
    let state = (body, 0u64, false);
    Box::pin(futures_util::stream::unfold(
        state,
        move |(mut body, mut seen, finished)| {
            let target = target.clone();
            async move {
                if finished {
                    return None;
                }
                let wrong = |seen: u64| {
                    io::Error::other(Error::new(
                        ErrorKind::DigestMismatch,
                        format!("blob {target} body has {seen} bytes or more, expected {size}"),
                    ))
                };
                match body.next().await {
                    Some(Ok(bytes)) => {
                        seen += bytes.len() as u64;
                        if seen > size {
                            return Some((Err(wrong(seen)), (body, seen, true)));
                        }
                        Some((Ok(bytes), (body, seen, false)))
                    }
                    Some(Err(err)) => Some((Err(err), (body, seen, true))),
                    None if seen != size => Some((Err(wrong(seen)), (body, seen, true))),
                    None => None,
                }
            }
        },
    ))
}
