//! Manifest `GET`, `HEAD` and `PUT`, with digest checks.

use bytes::Bytes;
use cache_core::descriptor::media_type;
use cache_core::{Descriptor, Digest, Error, ErrorKind, IndexRef, RawIndex, digest};
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Response};

use crate::auth::{pull_scope, push_scope};
use crate::client::{Body, Counters, Request};
use crate::registry::Registry;

/// Manifests larger than this are refused (the distribution registry's own limit is 4 MiB).
const MANIFEST_LIMIT: u64 = 4 * 1024 * 1024;

/// The `Accept` header of manifest requests.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

/// The header carrying the registry's digest of a manifest or blob.
pub(crate) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

impl Registry {
    /// Fetches the manifest or index named by `reference` (a tag or digest) with an `Accept`
    /// for OCI and Docker manifests and indexes.
    ///
    /// Returns the exact bytes, the media type (`Content-Type`, or the JSON's `mediaType` when
    /// the registry sends a generic type) and the digest of the bytes, checked against the
    /// requested digest and the `Docker-Content-Digest` header.
    /// Behavior: absence is `Ok(None)`; a digest disagreement is [`ErrorKind::DigestMismatch`].
    pub async fn get_manifest(&self, reference: &IndexRef) -> Result<Option<RawIndex>, Error> {
        let name = index_ref_str(reference);
        let target = format!("{}{}", self.reference.repository(), sep(reference, &name));
        let url = self.url(&format!("manifests/{name}")).await?;
        let req = Request {
            action: self.action("GET manifest", &target),
            method: Method::GET,
            url,
            headers: vec![(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))],
            body: Body::Empty,
            scopes: vec![pull_scope(self.reference.repository())],
            accept: &[200, 404],
        };
        // A body that breaks off or stalls is fetched again.
        let mut attempt = 0;
        let (headers, bytes) = loop {
            let resp = self.shared.call(&req).await?;
            if resp.status().as_u16() == 404 {
                return Ok(None);
            }
            let headers = resp.headers().clone();
            match read_manifest_body(resp, &self.shared.host, &target, self.shared.timeout).await {
                Ok(bytes) => break (headers, bytes),
                Err(err) if err.is_temporary() && attempt < self.shared.policy.max_retries => {
                    let delay = self.shared.policy.delay(attempt, None);
                    tracing::debug!(manifest = %target, ?delay, error = %err, "fetching a broken manifest again");
                    Counters::add(&self.shared.stats.retries, 1);
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(err) => return Err(err),
            }
        };
        Counters::add(&self.shared.stats.manifests_fetched, 1);
        let computed = digest::sha256(&bytes);
        let expected = match reference {
            IndexRef::Digest(want) => Some(want.clone()),
            IndexRef::Tag(_) => None,
        };
        check_digest(
            &headers,
            expected.as_ref(),
            &computed,
            &self.shared.host,
            &target,
        )?;
        let media_type = content_type(&headers)
            .filter(|ct| ct.starts_with("application/vnd."))
            .unwrap_or_else(|| sniff_media_type(&bytes).to_string());
        Ok(Some(RawIndex {
            media_type: Some(media_type),
            digest: computed,
            bytes,
        }))
    }

    /// `HEAD` on a manifest: its descriptor (media type, digest, size) without the body, or
    /// `None` if absent. The digest comes from `Docker-Content-Digest` (required here).
    pub async fn head_manifest(&self, reference: &IndexRef) -> Result<Option<Descriptor>, Error> {
        let name = index_ref_str(reference);
        let target = format!("{}{}", self.reference.repository(), sep(reference, &name));
        let url = self.url(&format!("manifests/{name}")).await?;
        let req = Request {
            action: self.action("HEAD manifest", &target),
            method: Method::HEAD,
            url,
            headers: vec![(ACCEPT, HeaderValue::from_static(MANIFEST_ACCEPT))],
            body: Body::Empty,
            scopes: vec![pull_scope(self.reference.repository())],
            accept: &[200, 404],
        };
        let resp = self.shared.call(&req).await?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        Counters::add(&self.shared.stats.manifests_fetched, 1);
        let headers = resp.headers();
        let digest = headers
            .get(DOCKER_CONTENT_DIGEST)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<Digest>().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "registry {} sent no Docker-Content-Digest for HEAD manifest {target}; \
                         use get_manifest instead",
                        self.shared.host
                    ),
                )
            })?;
        if let IndexRef::Digest(want) = reference
            && *want != digest
        {
            return Err(mismatch(&self.shared.host, &target, want, &digest));
        }
        // `Response::content_length` is the body's length, which a HEAD response lacks.
        let size = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or_default();
        Ok(Some(Descriptor::new(
            content_type(headers).unwrap_or_default(),
            digest,
            size,
        )))
    }

    /// Stores `raw` under `tag_or_digest` with `Content-Type` set to `raw.media_type`
    /// (required: [`ErrorKind::InvalidConfig`] without it).
    ///
    /// Behavior:
    /// - the blobs the manifest names must be in the repository already, else the registry
    ///   refuses it (`MANIFEST_BLOB_UNKNOWN`, [`ErrorKind::Corrupt`]);
    /// - `raw.digest` must be the digest of `raw.bytes`, and the registry's
    ///   `Docker-Content-Digest` must agree ([`ErrorKind::DigestMismatch`]).
    pub async fn put_manifest(&self, tag_or_digest: &str, raw: &RawIndex) -> Result<(), Error> {
        let target = if tag_or_digest.contains(':') {
            format!("{}@{tag_or_digest}", self.reference.repository())
        } else {
            format!("{}:{tag_or_digest}", self.reference.repository())
        };
        let media_type = raw.media_type.as_deref().ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("manifest for {target} has no media type; set RawIndex::media_type"),
            )
        })?;
        let computed = digest::sha256(&raw.bytes);
        if computed != raw.digest {
            return Err(mismatch(&self.shared.host, &target, &raw.digest, &computed));
        }
        let content_type = HeaderValue::from_str(media_type).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid media type {media_type:?} for manifest {target}"),
            )
        })?;
        let url = self.url(&format!("manifests/{tag_or_digest}")).await?;
        let req = Request {
            action: self.action("PUT manifest", &target),
            method: Method::PUT,
            url,
            headers: vec![(CONTENT_TYPE, content_type)],
            body: Body::Bytes(raw.bytes.clone()),
            scopes: vec![push_scope(self.reference.repository())],
            accept: &[200, 201, 202],
        };
        let resp = self.shared.call(&req).await?;
        check_digest(
            resp.headers(),
            Some(&raw.digest),
            &raw.digest,
            &self.shared.host,
            &target,
        )?;
        Counters::add(&self.shared.stats.manifests_put, 1);
        if !resp.headers().contains_key(DOCKER_CONTENT_DIGEST) {
            self.confirm_manifest(tag_or_digest, &raw.digest, &target)
                .await?;
        }
        Ok(())
    }

    /// Checks that `tag_or_digest` names the manifest `digest` just stored, for a registry
    /// whose answer to the `PUT` did not say (`HEAD`, or `GET` without a digest header).
    async fn confirm_manifest(
        &self,
        tag_or_digest: &str,
        digest: &Digest,
        target: &str,
    ) -> Result<(), Error> {
        let reference = match tag_or_digest.parse::<Digest>() {
            Ok(digest) => IndexRef::Digest(digest),
            Err(_) => IndexRef::Tag(tag_or_digest.to_string()),
        };
        let stored = match self.head_manifest(&reference).await {
            Ok(found) => found.map(|desc| desc.digest),
            Err(err) if err.kind() == ErrorKind::Unsupported => {
                self.get_manifest(&reference).await?.map(|raw| raw.digest)
            }
            Err(err) => return Err(err),
        };
        match stored {
            Some(stored) if stored == *digest => Ok(()),
            Some(stored) => Err(Error::new(
                ErrorKind::DigestMismatch,
                format!(
                    "registry {} accepted manifest {target} but serves {stored} under it, \
                     expected {digest}: the cache was not stored",
                    self.shared.host
                ),
            )),
            None => Err(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "registry {} accepted manifest {target} but does not serve it: the cache was \
                     not stored",
                    self.shared.host
                ),
            )),
        }
    }
}

/// The media type of a manifest from its JSON: `mediaType`, else by shape.
pub(crate) fn sniff_media_type(bytes: &[u8]) -> &'static str {
    let value: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    let known = [
        media_type::OCI_MANIFEST,
        media_type::OCI_INDEX,
        media_type::DOCKER_MANIFEST,
        media_type::DOCKER_LIST,
    ];
    if let Some(declared) = value.get("mediaType").and_then(|v| v.as_str())
        && let Some(found) = known.iter().find(|known| **known == declared)
    {
        return found;
    }
    if value.get("manifests").is_some() {
        media_type::OCI_INDEX
    } else {
        media_type::OCI_MANIFEST
    }
}

fn index_ref_str(reference: &IndexRef) -> String {
    match reference {
        IndexRef::Tag(tag) => tag.clone(),
        IndexRef::Digest(digest) => digest.to_string(),
    }
}

fn sep(reference: &IndexRef, name: &str) -> String {
    match reference {
        IndexRef::Tag(_) => format!(":{name}"),
        IndexRef::Digest(_) => format!("@{name}"),
    }
}

fn content_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    let value = value.split(';').next().unwrap_or(value).trim();
    (!value.is_empty()).then(|| value.to_string())
}

fn mismatch(host: &str, target: &str, expected: &Digest, got: &Digest) -> Error {
    Error::new(
        ErrorKind::DigestMismatch,
        format!("manifest {target} from registry {host} has digest {got}, expected {expected}"),
    )
}

/// Checks `computed` against the requested digest and the `Docker-Content-Digest` header
/// (a header in another algorithm than sha256 is not checked).
fn check_digest(
    headers: &HeaderMap,
    expected: Option<&Digest>,
    computed: &Digest,
    host: &str,
    target: &str,
) -> Result<(), Error> {
    if let Some(expected) = expected
        && expected != computed
    {
        return Err(mismatch(host, target, expected, computed));
    }
    if let Some(header) = headers
        .get(DOCKER_CONTENT_DIGEST)
        .and_then(|value| value.to_str().ok())
        && header.starts_with("sha256:")
        && header != computed.as_ref()
    {
        return Err(Error::new(
            ErrorKind::DigestMismatch,
            format!(
                "registry {host} says manifest {target} has Docker-Content-Digest {header}, \
                 but its bytes hash to {computed}"
            ),
        ));
    }
    Ok(())
}

/// Reads a manifest body, refusing more than [`MANIFEST_LIMIT`] bytes.
async fn read_manifest_body(
    mut resp: Response,
    host: &str,
    target: &str,
    stall: std::time::Duration,
) -> Result<Bytes, Error> {
    let too_big = || {
        Error::new(
            ErrorKind::Corrupt,
            format!("manifest {target} from registry {host} is larger than {MANIFEST_LIMIT} bytes"),
        )
    };
    if resp
        .content_length()
        .is_some_and(|len| len > MANIFEST_LIMIT)
    {
        return Err(too_big());
    }
    let mut out = Vec::new();
    loop {
        let Ok(chunk) = tokio::time::timeout(stall, resp.chunk()).await else {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "reading manifest {target} from registry {host} stalled for {:.1} s",
                    stall.as_secs_f64()
                ),
            )
            .set_temporary(true));
        };
        match chunk {
            Ok(Some(chunk)) => {
                out.extend_from_slice(&chunk);
                if out.len() as u64 > MANIFEST_LIMIT {
                    return Err(too_big());
                }
            }
            Ok(None) => return Ok(Bytes::from(out)),
            Err(err) => {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("reading manifest {target} from registry {host} failed"),
                )
                .with_source(err)
                .set_temporary(true));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_media_types() {
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.list.v2+json","manifests":[]}"#),
            media_type::DOCKER_LIST
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"manifests":[]}"#),
            media_type::OCI_INDEX
        );
        assert_eq!(
            sniff_media_type(br#"{"schemaVersion":2,"config":{}}"#),
            media_type::OCI_MANIFEST
        );
    }

    #[test]
    fn docker_content_digest_is_checked() {
        let computed = digest::sha256(b"a");
        let other = digest::sha256(b"b");
        let mut headers = HeaderMap::new();
        assert!(check_digest(&headers, None, &computed, "h", "t").is_ok());
        headers.insert(
            DOCKER_CONTENT_DIGEST,
            HeaderValue::from_str(other.as_ref()).expect("valid header"),
        );
        let err = check_digest(&headers, None, &computed, "h", "t").expect_err("mismatch");
        assert_eq!(err.kind(), ErrorKind::DigestMismatch);
        let err = check_digest(&HeaderMap::new(), Some(&other), &computed, "h", "t")
            .expect_err("mismatch");
        assert_eq!(err.kind(), ErrorKind::DigestMismatch);
    }
}
