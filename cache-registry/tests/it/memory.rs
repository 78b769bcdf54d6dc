//! The backend conformance suite against an in-memory distribution server on the scripted fake,
//! so it runs everywhere (the real registry runs it too, where one is given).
//!
//! The server keeps the distribution API's state: blobs per repository, upload sessions
//! (monolithic, chunked with `Content-Range`, resumed after `GET` of the session), cross-
//! repository mounts, manifests by tag and digest, and byte ranges on blob `GET`.

use std::collections::HashMap;
use std::sync::Mutex;

use cache_core::digest;
use cache_registry::{Credentials, Options, Registry};

use crate::fake::{Fake, Reply, Req};

#[derive(Default)]
struct State {
    /// (repository, digest) → bytes.
    blobs: HashMap<(String, String), Vec<u8>>,
    /// (repository, tag or digest) → (media type, bytes).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    /// Session id → (repository, bytes received).
    uploads: HashMap<String, (String, Vec<u8>)>,
    next_upload: u64,
}

/// `/v2/<repository>/<kind>/<rest>` split on the last `/blobs/` or `/manifests/`.
fn route(path: &str) -> Option<(&str, &str, &str)> {
    let path = path.strip_prefix("/v2/")?;
    for kind in ["/blobs/uploads/", "/blobs/", "/manifests/"] {
        if let Some(at) = path.rfind(kind) {
            return Some((
                &path[..at],
                kind.trim_matches('/'),
                &path[at + kind.len()..],
            ));
        }
    }
    None
}

fn digest_of(bytes: &[u8]) -> String {
    digest::sha256(bytes).to_string()
}

fn session_reply(status: u16, repo: &str, id: &str, received: usize) -> Reply {
    let range = format!("0-{}", received.saturating_sub(1));
    Reply::status(status)
        .header("location", format!("/v2/{repo}/blobs/uploads/{id}"))
        .header("range", range)
        .header("docker-upload-uuid", id)
}

fn blob_created(repo: &str, digest: &str) -> Reply {
    Reply::status(201)
        .header("location", format!("/v2/{repo}/blobs/{digest}"))
        .header("docker-content-digest", digest)
}

impl State {
    fn handle(&mut self, req: &Req) -> Reply {
        if req.path() == "/v2/" {
            return Reply::status(200);
        }
        let Some((repo, kind, rest)) = route(req.path()) else {
            return Reply::error(404, "NAME_UNKNOWN", "no such route");
        };
        let repo = repo.to_owned();
        match (req.method.as_str(), kind) {
            ("POST", "blobs/uploads") => self.start_upload(req, repo),
            ("PATCH", "blobs/uploads") => self.append(req, rest),
            ("PUT", "blobs/uploads") => self.finish_upload(req, rest),
            ("GET", "blobs/uploads") => match self.uploads.get(rest) {
                Some((repo, bytes)) => session_reply(204, repo, rest, bytes.len()),
                None => Reply::error(404, "BLOB_UPLOAD_UNKNOWN", "no such upload"),
            },
            ("DELETE", "blobs/uploads") => {
                self.uploads.remove(rest);
                Reply::status(204)
            }
            ("HEAD" | "GET", "blobs") => self.blob(req, &repo, rest),
            ("DELETE", "blobs") => match self.blobs.remove(&(repo, rest.to_owned())) {
                Some(_) => Reply::status(202),
                None => Reply::error(404, "BLOB_UNKNOWN", "blob unknown"),
            },
            ("PUT", "manifests") => {
                let media = req.header("content-type").unwrap_or_default().to_owned();
                let digest = digest_of(&req.body);
                let entry = (media, req.body.clone());
                self.manifests
                    .insert((repo.clone(), digest.clone()), entry.clone());
                self.manifests
                    .insert((repo.clone(), rest.to_owned()), entry);
                Reply::status(201)
                    .header("location", format!("/v2/{repo}/manifests/{digest}"))
                    .header("docker-content-digest", digest)
            }
            ("HEAD" | "GET", "manifests") => match self.manifests.get(&(repo, rest.to_owned())) {
                Some((media, bytes)) => Reply::status(200)
                    .header("content-type", media.clone())
                    .header("docker-content-digest", digest_of(bytes))
                    .body(bytes.clone()),
                None => Reply::error(404, "MANIFEST_UNKNOWN", "manifest unknown"),
            },
            _ => Reply::error(405, "UNSUPPORTED", "method not allowed"),
        }
    }

    fn start_upload(&mut self, req: &Req, repo: String) -> Reply {
        if let (Some(digest), Some(from)) = (req.query("mount").pop(), req.query("from").pop())
            && let Some(bytes) = self.blobs.get(&(from, digest.clone())).cloned()
        {
            self.blobs.insert((repo.clone(), digest.clone()), bytes);
            return blob_created(&repo, &digest);
        }
        if let Some(digest) = req.query("digest").pop() {
            if digest_of(&req.body) != digest {
                return Reply::error(400, "DIGEST_INVALID", "digest does not match");
            }
            self.blobs
                .insert((repo.clone(), digest.clone()), req.body.clone());
            return blob_created(&repo, &digest);
        }
        self.next_upload += 1;
        let id = format!("upload-{}", self.next_upload);
        self.uploads
            .insert(id.clone(), (repo.clone(), req.body.clone()));
        session_reply(202, &repo, &id, req.body.len())
    }

    fn append(&mut self, req: &Req, id: &str) -> Reply {
        let Some((repo, bytes)) = self.uploads.get_mut(id) else {
            return Reply::error(404, "BLOB_UPLOAD_UNKNOWN", "no such upload");
        };
        // A chunk must start where the session stands.
        if let Some(range) = req.header("content-range") {
            let start = range
                .split('-')
                .next()
                .and_then(|s| s.trim().parse::<usize>().ok());
            if start != Some(bytes.len()) {
                return session_reply(416, repo, id, bytes.len());
            }
        }
        bytes.extend_from_slice(&req.body);
        session_reply(202, repo, id, bytes.len())
    }

    fn finish_upload(&mut self, req: &Req, id: &str) -> Reply {
        let Some((repo, mut bytes)) = self.uploads.remove(id) else {
            return Reply::error(404, "BLOB_UPLOAD_UNKNOWN", "no such upload");
        };
        bytes.extend_from_slice(&req.body);
        let digest = req.query("digest").pop().unwrap_or_default();
        if digest_of(&bytes) != digest {
            return Reply::error(400, "DIGEST_INVALID", "digest does not match");
        }
        self.blobs.insert((repo.clone(), digest.clone()), bytes);
        blob_created(&repo, &digest)
    }

    fn blob(&self, req: &Req, repo: &str, digest: &str) -> Reply {
        let Some(bytes) = self.blobs.get(&(repo.to_owned(), digest.to_owned())) else {
            return Reply::error(404, "BLOB_UNKNOWN", "blob unknown");
        };
        let from = req
            .header("range")
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|start| start.parse::<usize>().ok());
        let reply = |status, body: &[u8]| {
            Reply::status(status)
                .header("content-type", "application/octet-stream")
                .header("docker-content-digest", digest)
                .body(body.to_vec())
        };
        match from {
            Some(start) if start > 0 && start < bytes.len() => reply(206, &bytes[start..]).header(
                "content-range",
                format!("bytes {start}-{}/{}", bytes.len() - 1, bytes.len()),
            ),
            _ => reply(200, bytes),
        }
    }
}

async fn memory_registry() -> Fake {
    let state = Mutex::new(State::default());
    Fake::start(move |_| move |req: &Req| state.lock().expect("state lock").handle(req)).await
}

#[tokio::test]
async fn conformance_on_an_in_memory_registry() {
    let fake = memory_registry().await;
    let options = Options {
        credentials: Credentials::Anonymous,
        ..Options::new()
    };
    let registry = Registry::new(&format!("{}/conformance:cache", fake.addr), options)
        .expect("valid reference");
    cache_core::testkit::conformance(&registry, "memory").await;
    // The suite went through the distribution API, uploads included.
    let methods: Vec<String> = fake.requests().iter().map(|r| r.method.clone()).collect();
    for method in ["HEAD", "GET", "POST", "PUT"] {
        assert!(
            methods.iter().any(|m| m == method),
            "no {method} in {methods:?}"
        );
    }
}
