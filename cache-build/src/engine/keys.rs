//! Cache keys of steps, in BuildKit's record-digest form (spec §1.4).

use cache_core::Digest;
use cache_core::digest::sha256;
use serde::Serialize;

/// Bumped when the meaning of keys changes, so old caches stop matching instead of lying.
const KEY_VERSION: &str = "buildcache.v1";

/// A record digest: `sha256("<cache map digest>@<output>")`.
pub fn record_digest(cache_map: &Digest, output: i64) -> Digest {
    sha256(format!("{cache_map}@{output}").as_bytes())
}

/// The cache-map digest of an operation definition: sha256 of its canonical JSON.
pub fn cache_map<T: Serialize>(op: &T) -> Digest {
    #[derive(Serialize)]
    struct Versioned<'a, T> {
        version: &'a str,
        op: &'a T,
    }
    let json = serde_json::to_vec(&Versioned {
        version: KEY_VERSION,
        op,
    })
    .expect("key definitions always serialize");
    sha256(&json)
}

/// The root record of an empty filesystem (`FROM scratch`).
pub fn scratch_root() -> Digest {
    record_digest(&sha256(b"buildcache.scratch"), 0)
}

/// The root record of an image, named by its manifest digest (like BuildKit's source op).
pub fn image_root(manifest: &Digest) -> Digest {
    record_digest(
        &sha256(format!("buildkit.source.v0:docker-image://{manifest}").as_bytes()),
        0,
    )
}

/// The content ("slow") key of a set of files, a root record with output `-1`.
pub fn content_root(checksum: &Digest) -> Digest {
    record_digest(checksum, -1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_digest_matches_the_spec_form() {
        // spec §1.4: sha256 of the ASCII string "<cacheMapDigest>@<output>".
        let map = sha256(b"x");
        assert_eq!(
            record_digest(&map, 0),
            sha256(format!("{map}@0").as_bytes())
        );
        assert_ne!(record_digest(&map, 0), record_digest(&map, -1));
    }

    #[test]
    fn keys_depend_on_every_field() {
        #[derive(Serialize)]
        struct Op<'a> {
            args: &'a [&'a str],
        }
        assert_ne!(
            cache_map(&Op { args: &["a"] }),
            cache_map(&Op { args: &["b"] })
        );
        assert_eq!(
            cache_map(&Op { args: &["a"] }),
            cache_map(&Op { args: &["a"] })
        );
    }
}
