//! SHA-256 digests as OCI uses them, and an incremental hasher.

use sha2::{Digest as _, Sha256};

pub use oci_spec::image::Digest;

/// The SHA-256 digest of `bytes`, as `sha256:<64 hex>`.
pub fn sha256(bytes: &[u8]) -> Digest {
    let mut hasher = Hasher::new();
    hasher.update(bytes);
    hasher.finish()
}

/// Parses `s` as a `sha256:<64 lowercase hex>` digest.
///
/// Other algorithms are refused: everything this project reads and writes is addressed by SHA-256.
pub fn parse_sha256(s: &str) -> Result<Digest, String> {
    let digest: Digest = s
        .parse()
        .map_err(|err| format!("invalid digest {s:?}: {err}"))?;
    if digest.algorithm().as_ref() != "sha256" {
        return Err(format!(
            "unsupported digest algorithm in {s:?}: only sha256 is supported"
        ));
    }
    Ok(digest)
}

/// Incremental SHA-256 over a stream of bytes.
#[derive(Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    n_bytes: u64,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher")
            .field("n_bytes", &self.n_bytes)
            .finish()
    }
}

impl Hasher {
    /// A hasher that has seen no bytes.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds `bytes` into the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        self.inner.update(bytes);
        self.n_bytes += bytes.len() as u64;
    }

    /// The number of bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.n_bytes
    }

    /// Whether no bytes were hashed.
    pub fn is_empty(&self) -> bool {
        self.n_bytes == 0
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        let hex = hex::encode(self.inner.finalize());
        Digest::try_from(format!("sha256:{hex}")).expect("a sha256 hex string is a valid digest")
    }
}

impl std::io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_empty_input() {
        assert_eq!(
            sha256(b"").to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn parse_refuses_other_algorithms_and_bad_hex() {
        assert!(parse_sha256("sha512:abcd").is_err());
        assert!(parse_sha256("sha256:XYZ").is_err());
        assert!(parse_sha256(sha256(b"x").as_ref()).is_ok());
    }
}
