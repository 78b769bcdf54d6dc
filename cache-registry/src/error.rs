//! Mapping of registry responses and transport failures to `cache_core` errors.

use std::time::Duration;

use cache_core::{Error, ErrorKind};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use serde::Deserialize;

/// A failed attempt: the error plus how long the registry asked us to wait before retrying.
#[derive(Debug)]
pub(crate) struct Fail {
    pub(crate) error: Error,
    pub(crate) retry_after: Option<Duration>,
    /// Whether the retry loop may run this attempt again (false once an upload body was read;
    /// the error itself may still be temporary for callers that can re-create the body).
    pub(crate) retry_now: bool,
}

impl From<Error> for Fail {
    fn from(error: Error) -> Self {
        Fail {
            error,
            retry_after: None,
            retry_now: true,
        }
    }
}

/// What a request was doing, for messages: `registry HOST refused ACTION TARGET: …`.
#[derive(Clone, Debug)]
pub(crate) struct Action<'a> {
    /// `host[:port]` as in the reference.
    pub(crate) host: &'a str,
    /// `PUT manifest`, `HEAD blob`, …
    pub(crate) what: &'a str,
    /// `app:cache`, `app@sha256:…`.
    pub(crate) target: &'a str,
}

/// The body of a distribution error response.
#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorEntry>,
}

#[derive(Deserialize)]
struct ErrorEntry {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// Maps a registry's error response (status, headers, body) to an error.
///
/// The message keeps the registry's own `errors[].code` and `message`, e.g.
/// `registry 127.0.0.1:5000 refused PUT manifest app:cache: 401 UNAUTHORIZED authentication required`.
/// 429 and 5xx (but 501 and 505) are temporary; `Retry-After` in seconds is kept for the retry loop.
pub(crate) fn parse_error(
    action: &Action<'_>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
) -> Fail {
    let entries = serde_json::from_slice::<ErrorBody>(body)
        .map(|parsed| parsed.errors)
        .unwrap_or_default();
    let by_status = match status.as_u16() {
        401 => ErrorKind::Unauthorized,
        403 => ErrorKind::Denied,
        404 => ErrorKind::NotFound,
        416 => ErrorKind::Unexpected,
        429 => ErrorKind::RateLimited,
        _ => ErrorKind::Unexpected,
    };
    // The first registry code that names a kind wins over the status.
    let by_code = entries.iter().find_map(|entry| match entry.code.as_str() {
        "UNAUTHORIZED" => Some(ErrorKind::Unauthorized),
        "DENIED" => Some(ErrorKind::Denied),
        "BLOB_UNKNOWN" | "MANIFEST_UNKNOWN" | "NAME_UNKNOWN" | "BLOB_UPLOAD_UNKNOWN" => {
            Some(ErrorKind::NotFound)
        }
        "TOOMANYREQUESTS" => Some(ErrorKind::RateLimited),
        "DIGEST_INVALID" | "SIZE_INVALID" => Some(ErrorKind::DigestMismatch),
        // The manifest names blobs the repository lacks: the cache being written is incomplete.
        "MANIFEST_BLOB_UNKNOWN" => Some(ErrorKind::Corrupt),
        "MANIFEST_INVALID" | "MANIFEST_UNVERIFIED" | "NAME_INVALID" | "TAG_INVALID" => {
            Some(ErrorKind::InvalidConfig)
        }
        "UNSUPPORTED" => Some(ErrorKind::Unsupported),
        _ => None,
    });
    let kind = by_code.unwrap_or(by_status);
    let temporary = kind == ErrorKind::RateLimited
        || (status.is_server_error()
            && status != StatusCode::NOT_IMPLEMENTED
            && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED);

    let detail = if entries.is_empty() {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        let reason = status.canonical_reason().unwrap_or("");
        if text.is_empty() || text.len() > 200 || text.starts_with('<') {
            reason.to_string()
        } else {
            text.to_string()
        }
    } else {
        entries
            .iter()
            .map(|entry| {
                format!("{} {}", entry.code, entry.message)
                    .trim()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("; ")
    };
    let mut message = format!(
        "registry {} refused {} {}: {} {}",
        action.host,
        action.what,
        action.target,
        status.as_u16(),
        detail
    );
    let message_len = message.trim_end().len();
    message.truncate(message_len);
    match kind {
        ErrorKind::Unauthorized => message.push_str(&format!(
            "; log in with `docker login {}` or check the credentials",
            action.host
        )),
        ErrorKind::Denied => message.push_str("; the credentials do not allow this"),
        ErrorKind::Corrupt if by_code.is_some() => {
            message.push_str("; push the blobs before the manifest that names them")
        }
        _ => {}
    }
    Fail {
        error: Error::new(kind, message).set_temporary(temporary),
        retry_after: retry_after(headers),
        retry_now: true,
    }
}

/// Maps a failure to talk to the registry at all (connect, TLS, reset, timeout).
///
/// Broken connections and timeouts are temporary; a TLS or protocol failure while connecting
/// is temporary too, as the reason can be a restarting server.
pub(crate) fn transport_error(action: &Action<'_>, err: reqwest::Error) -> Error {
    let temporary = err.is_connect() || err.is_timeout() || err.is_request() || err.is_body();
    let what = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "could not connect"
    } else {
        "connection failed"
    };
    Error::new(
        ErrorKind::Unexpected,
        format!(
            "registry {} {what} during {} {}",
            action.host, action.what, action.target
        ),
    )
    .with_source(chain(&err))
    .set_temporary(temporary)
}

/// The error with all its causes as one string (reqwest's `Display` shows only the outer one).
pub(crate) fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// `Retry-After` in delta-seconds; HTTP dates are ignored (the backoff applies instead).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, body: &str, kind: ErrorKind, temporary: bool, message: &str) {
        let action = Action {
            host: "127.0.0.1:5000",
            what: "PUT manifest",
            target: "app:cache",
        };
        let status = StatusCode::from_u16(status).expect("valid status");
        let fail = parse_error(&action, status, &HeaderMap::new(), body.as_bytes());
        assert_eq!(fail.error.kind(), kind, "{}", fail.error);
        assert_eq!(fail.error.is_temporary(), temporary, "{}", fail.error);
        assert!(
            fail.error.to_string().contains(message),
            "{:?} does not contain {message:?}",
            fail.error.to_string()
        );
    }

    #[test]
    fn registry_codes_and_statuses() {
        check(
            401,
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}"#,
            ErrorKind::Unauthorized,
            false,
            "registry 127.0.0.1:5000 refused PUT manifest app:cache: 401 UNAUTHORIZED authentication required",
        );
        check(
            400,
            r#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry","detail":"sha256:ab"}]}"#,
            ErrorKind::Corrupt,
            false,
            "400 MANIFEST_BLOB_UNKNOWN blob unknown to registry",
        );
        check(
            400,
            r#"{"errors":[{"code":"DIGEST_INVALID","message":"provided digest did not match uploaded content"}]}"#,
            ErrorKind::DigestMismatch,
            false,
            "DIGEST_INVALID",
        );
        check(
            403,
            r#"{"errors":[{"code":"DENIED","message":"no"}]}"#,
            ErrorKind::Denied,
            false,
            "403 DENIED no",
        );
        check(404, "", ErrorKind::NotFound, false, "404 Not Found");
        check(
            429,
            "slow down",
            ErrorKind::RateLimited,
            true,
            "429 slow down",
        );
        check(
            503,
            "<html>busy</html>",
            ErrorKind::Unexpected,
            true,
            "503 Service Unavailable",
        );
        check(501, "", ErrorKind::Unexpected, false, "501");
        check(
            400,
            r#"{"errors":[{"code":"MANIFEST_INVALID","message":"manifest invalid"}]}"#,
            ErrorKind::InvalidConfig,
            false,
            "MANIFEST_INVALID",
        );
    }

    #[test]
    fn retry_after_seconds() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, "3".parse().expect("valid header"));
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(3)));
        headers.insert(
            RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT"
                .parse()
                .expect("valid header"),
        );
        assert_eq!(retry_after(&headers), None);
    }
}
