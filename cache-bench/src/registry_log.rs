//! Reading the distribution registry's access log: which blobs a build uploaded and downloaded.
//!
//! Debian's `docker-registry` writes one combined-log line per request, e.g.
//! `127.0.0.1 - - [date] "GET /v2/bench/a/blobs/sha256:… HTTP/1.1" 200 2847 "" "buildcache/0.1.0"`.
//! Uploaded sizes are not in the log, so they are read from the registry's storage directory.

use std::path::{Path, PathBuf};

/// One request of the access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `HEAD`, `PUT`, `PATCH`, `POST`, `DELETE`.
    pub method: String,
    /// The request target, with its query string.
    pub target: String,
    /// The response status.
    pub status: u16,
    /// Response body bytes.
    pub bytes: u64,
}

/// Parses one access-log line; `None` for the registry's other (key=value) log lines.
pub fn parse_line(line: &str) -> Option<Request> {
    let start = line.find("] \"")? + 3;
    let rest = &line[start..];
    let end = rest.find('"')?;
    let mut request = rest[..end].split_whitespace();
    let method = request.next()?.to_owned();
    let target = request.next()?.to_owned();
    let mut after = rest[end + 1..].split_whitespace();
    let status = after.next()?.parse().ok()?;
    let bytes = after.next()?.parse().unwrap_or(0);
    Some(Request {
        method,
        target,
        status,
        bytes,
    })
}

/// The requests of `log` (a slice of the access log).
pub fn requests(log: &str) -> Vec<Request> {
    log.lines().filter_map(parse_line).collect()
}

/// What the requests of one run moved, classified with the registry's storage.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Traffic {
    /// Layer blobs downloaded (`GET …/blobs/sha256:…` answered 200, content not JSON).
    pub layer_gets: u64,
    /// Bytes of those layer blobs.
    pub layer_bytes_down: u64,
    /// Every blob download (layers, configs, cache configs).
    pub blob_gets: u64,
    /// Blob uploads completed (`PUT …/blobs/uploads/…?digest=…` answered 201).
    pub blob_puts: u64,
    /// Bytes of the uploaded blobs (their size in the registry's storage).
    pub bytes_up: u64,
    /// Blob existence checks (`HEAD …/blobs/…`).
    pub blob_heads: u64,
    /// Manifests written.
    pub manifest_puts: u64,
}

/// The registry's storage for one blob digest (`sha256:HEX`).
pub fn blob_data_path(storage: &Path, digest: &str) -> Option<PathBuf> {
    let (algo, hex) = digest.split_once(':')?;
    if hex.len() < 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    Some(
        storage
            .join("docker/registry/v2/blobs")
            .join(algo)
            .join(&hex[..2])
            .join(hex)
            .join("data"),
    )
}

/// Whether the stored blob is a layer: anything but a JSON document (configs, cache configs).
fn is_layer(storage: &Path, digest: &str) -> bool {
    let Some(path) = blob_data_path(storage, digest) else {
        return false;
    };
    let mut first = [0u8; 1];
    match std::fs::File::open(path) {
        Ok(mut file) => {
            use std::io::Read;
            file.read(&mut first).is_ok_and(|n| n == 1) && first[0] != b'{'
        }
        Err(_) => false,
    }
}

/// Classifies the requests of one run; `storage` is the registry's `rootdirectory`.
pub fn traffic(requests: &[Request], storage: &Path) -> Traffic {
    let mut traffic = Traffic::default();
    for request in requests {
        let path = request.target.split('?').next().unwrap_or("");
        match request.method.as_str() {
            "GET" if request.status == 200 && path.contains("/blobs/sha256:") => {
                traffic.blob_gets += 1;
                let digest = &path[path.rfind("/blobs/").unwrap_or(0) + "/blobs/".len()..];
                if is_layer(storage, digest) {
                    traffic.layer_gets += 1;
                    traffic.layer_bytes_down += request.bytes;
                }
            }
            "HEAD" if path.contains("/blobs/") => traffic.blob_heads += 1,
            "PUT" if request.status == 201 && path.contains("/blobs/uploads/") => {
                traffic.blob_puts += 1;
                if let Some(digest) = query_digest(&request.target)
                    && let Some(data) = blob_data_path(storage, &digest)
                {
                    traffic.bytes_up += std::fs::metadata(data).map(|m| m.len()).unwrap_or(0);
                }
            }
            "PUT" if request.status == 201 && path.contains("/manifests/") => {
                traffic.manifest_puts += 1;
            }
            _ => {}
        }
    }
    traffic
}

/// The `digest=` query parameter, percent-decoded (`sha256%3Aabc` → `sha256:abc`).
fn query_digest(target: &str) -> Option<String> {
    let query = target.split_once('?')?.1;
    let value = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("digest="))?;
    Some(value.replace("%3A", ":").replace("%3a", ":"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GET: &str = r#"127.0.0.1 - - [23/Nov/2026:08:46:51 +0000] "GET /v2/ours/a/blobs/sha256:aa11 HTTP/1.1" 200 2847 "" "buildcache/0.1.0""#;
    const PUT: &str = r#"127.0.0.1 - - [23/Nov/2026:08:44:25 +0000] "PUT /v2/peer/cache/blobs/uploads/a3?_state=x%3D&digest=sha256%3Abb22 HTTP/1.1" 201 0 "" "Buildah/1.28.2""#;

    #[test]
    fn access_lines_parse_and_other_lines_do_not() {
        let request = parse_line(GET).expect("access line");
        assert_eq!(request.method, "GET");
        assert_eq!(request.target, "/v2/ours/a/blobs/sha256:aa11");
        assert_eq!((request.status, request.bytes), (200, 2847));
        assert_eq!(
            parse_line(r#"time="x" level=info msg="response completed" http.request.method=GET"#),
            None
        );
    }

    fn store(storage: &Path, digest: &str, data: &[u8]) {
        let path = blob_data_path(storage, digest).expect("digest");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, data).expect("write");
    }

    #[test]
    fn traffic_separates_layers_from_json_and_sizes_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        store(dir.path(), "sha256:aa11", b"{\"layers\":[]}");
        store(dir.path(), "sha256:cc33", b"\x1f\x8b gzip bytes");
        store(dir.path(), "sha256:bb22", &[7u8; 1234]);
        let layer_get = GET.replace("aa11", "cc33").replace("2847", "15");
        let log = format!("{GET}\n{layer_get}\n{PUT}\nnoise line\n");
        let traffic = traffic(&requests(&log), dir.path());
        assert_eq!(traffic.blob_gets, 2);
        assert_eq!(traffic.layer_gets, 1);
        assert_eq!(traffic.layer_bytes_down, 15);
        assert_eq!(traffic.blob_puts, 1);
        assert_eq!(traffic.bytes_up, 1234);
    }
}
