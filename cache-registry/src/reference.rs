//! Image references as users type them, normalised the way Docker does.

use std::fmt;
use std::str::FromStr;

use cache_core::{Digest, Error, ErrorKind};

/// The registry name Docker uses for Docker Hub in references.
const DOCKER_HUB: &str = "docker.io";
/// The host that serves Docker Hub's distribution API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A repository on a registry, with an optional tag and digest.
///
/// Parsed with Docker's normalisation: `app` is `docker.io/library/app:latest`, a first path
/// component with a `.` or `:` or equal to `localhost` is a registry host, and a reference
/// without tag or digest gets the tag `latest`.
/// `Display` prints the canonical form, e.g. `127.0.0.1:5000/app:cache`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

impl ImageRef {
    /// Parses `reference` as users type it (`host:5000/repo:tag`, `repo`, `host/repo@sha256:…`).
    ///
    /// Errors with [`ErrorKind::InvalidConfig`] naming the reference if it is malformed.
    pub fn parse(reference: &str) -> Result<ImageRef, Error> {
        let invalid = |why: String| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "invalid image reference {reference:?}: {why}; expected \
                     [HOST[:PORT]/]REPOSITORY[:TAG][@sha256:DIGEST], all lowercase"
                ),
            )
        };
        let parsed = oci_spec::distribution::Reference::try_from(reference)
            .map_err(|err| invalid(err.to_string()))?;
        let digest = match parsed.digest() {
            Some(digest) => Some(cache_core::digest::parse_sha256(digest).map_err(invalid)?),
            None => None,
        };
        Ok(ImageRef {
            registry: parsed.registry().to_string(),
            repository: parsed.repository().to_string(),
            tag: parsed.tag().map(str::to_string),
            digest,
        })
    }

    /// The registry as written in references (`docker.io`, `127.0.0.1:5000`).
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path (`library/app`, `team/app`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when the user gave neither tag nor digest).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// The `host[:port]` that serves the distribution API (Docker Hub's references say
    /// `docker.io`, its API lives at `registry-1.docker.io`).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// Whether the registry is on a loopback address (`localhost`, `127.0.0.0/8`, `::1`), where
    /// Docker allows plain HTTP without configuration.
    pub fn is_loopback(&self) -> bool {
        is_loopback_host(&self.registry)
    }

    /// The same registry with another repository, without tag or digest.
    ///
    /// On Docker Hub a single-component repository gets the `library/` prefix.
    pub fn with_repository(&self, repository: &str) -> ImageRef {
        let repository = if self.registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository.to_string()
        };
        ImageRef {
            registry: self.registry.clone(),
            repository,
            tag: None,
            digest: None,
        }
    }

    /// `repository:tag`, `repository@digest` or `repository`: how messages name the object.
    pub fn short(&self) -> String {
        let mut out = self.repository.clone();
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest.as_ref());
        }
        out
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.short())
    }
}

impl FromStr for ImageRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

/// Whether `host` (with an optional `:port`, IPv6 in brackets) is a loopback name or address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or(rest)
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    if name.eq_ignore_ascii_case("localhost") {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|addr| addr.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &str, canonical: &str, registry: &str, repository: &str) {
        let parsed = ImageRef::parse(input).expect("valid reference");
        assert_eq!(parsed.to_string(), canonical, "{input}");
        assert_eq!(parsed.registry(), registry, "{input}");
        assert_eq!(parsed.repository(), repository, "{input}");
    }

    #[test]
    fn docker_normalisation() {
        check(
            "app",
            "docker.io/library/app:latest",
            "docker.io",
            "library/app",
        );
        check(
            "team/app:v1",
            "docker.io/team/app:v1",
            "docker.io",
            "team/app",
        );
        check(
            "127.0.0.1:5000/app:cache",
            "127.0.0.1:5000/app:cache",
            "127.0.0.1:5000",
            "app",
        );
        check("localhost/a/b", "localhost/a/b:latest", "localhost", "a/b");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let pinned = ImageRef::parse(&format!("host.example/repo@{digest}")).expect("valid");
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned.digest().map(|d| d.to_string()), Some(digest.clone()));
        assert_eq!(pinned.to_string(), format!("host.example/repo@{digest}"));
        assert_eq!(
            ImageRef::parse("app").expect("valid").api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn invalid_references_name_the_input() {
        let err = ImageRef::parse("Host/App:x").expect_err("uppercase repository");
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(err.to_string().contains("\"Host/App:x\""), "{err}");
        assert!(ImageRef::parse("").is_err());
    }

    #[test]
    fn loopback_hosts() {
        for host in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "docker.io",
            "10.0.0.1:5000",
            "example.com:443",
            "[2001:db8::1]:5000",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn with_repository_keeps_the_registry() {
        let hub = ImageRef::parse("app:cache").expect("valid");
        assert_eq!(
            hub.with_repository("other").to_string(),
            "docker.io/library/other"
        );
        let local = ImageRef::parse("127.0.0.1:5000/a:b").expect("valid");
        assert_eq!(local.with_repository("src/x").short(), "src/x");
    }
}
