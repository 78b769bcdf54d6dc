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
        let (registry, repository, tag, digest) = split_reference(reference).map_err(invalid)?;
        let digest = match digest {
            Some(digest) => Some(cache_core::digest::parse_sha256(digest).map_err(invalid)?),
            None => None,
        };
        // Neither tag nor digest means `latest`, as Docker reads it.
        let tag = match (tag, &digest) {
            (None, None) => Some("latest".to_owned()),
            (tag, _) => tag.map(str::to_owned),
        };
        Ok(ImageRef {
            registry,
            repository,
            tag,
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
/// (registry, repository, tag, digest) of a reference.
type Parts<'a> = (String, String, Option<&'a str>, Option<&'a str>);

/// Splits `reference` by Docker's grammar into (registry, repository, tag, digest), with Docker
/// Hub's normalisation. Written by hand: the grammar as one regular expression costs tens of
/// milliseconds to compile, on every build that names a registry.
fn split_reference(reference: &str) -> Result<Parts<'_>, String> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => {
            let valid = digest.split_once(':').is_some_and(|(algorithm, hex)| {
                !algorithm.is_empty()
                    && algorithm.split(['-', '_', '+', '.']).all(|part| {
                        part.starts_with(|c: char| c.is_ascii_alphabetic())
                            && part.chars().all(|c| c.is_ascii_alphanumeric())
                    })
                    && hex.len() >= 32
                    && hex.chars().all(|c| c.is_ascii_hexdigit())
            });
            if !valid {
                return Err(format!("invalid digest {digest:?}"));
            }
            (rest, Some(digest))
        }
        None => (reference, None),
    };
    let last_component = rest.rfind('/').map_or(0, |slash| slash + 1);
    let (name, tag) = match rest[last_component..].find(':') {
        Some(colon) => {
            let colon = last_component + colon;
            (&rest[..colon], Some(&rest[colon + 1..]))
        }
        None => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(format!(
            "invalid tag {tag:?} (letters, digits, _ . - up to 128, not starting with . or -)"
        ));
    }
    if name.is_empty() {
        return Err("the repository name is empty".into());
    }
    if name.len() > 255 {
        return Err("the repository name is longer than 255 characters".into());
    }
    let (mut registry, mut repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            if !is_domain(first) {
                return Err(format!("invalid registry host {first:?}"));
            }
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), name.to_owned()),
    };
    if !repository.split('/').all(is_path_component) {
        return Err(format!(
            "invalid repository {repository:?} (lowercase letters and digits, separated by . _ __ - or /)"
        ));
    }
    if registry == "index.docker.io" {
        registry = DOCKER_HUB.to_owned();
    }
    if registry == DOCKER_HUB && !repository.contains('/') {
        repository = format!("library/{repository}");
    }
    Ok((registry, repository, tag, digest))
}

/// `[\w][\w.-]{0,127}` with Go's ASCII `\w`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    tag.len() <= 128
        && tag.starts_with(word)
        && tag.chars().all(|c| word(c) || c == '.' || c == '-')
}

/// `[a-z0-9]+` runs joined by one `.` or `_`, by `__`, or by any number of `-`.
fn is_path_component(component: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let runs: Vec<&str> = component.split(|c: char| !alnum(c)).collect();
    let separators: Vec<&str> = component
        .split(alnum)
        .filter(|sep| !sep.is_empty())
        .collect();
    // Between alphanumeric runs; an inner empty run is the middle of a `__` or `--` separator.
    let (Some(first), Some(last)) = (runs.first(), runs.last()) else {
        return false;
    };
    !first.is_empty()
        && !last.is_empty()
        && separators
            .iter()
            .all(|sep| matches!(*sep, "." | "_" | "__") || sep.chars().all(|c| c == '-'))
}

/// A host name, IPv4 address or `[IPv6]`, with an optional `:port`.
fn is_domain(domain: &str) -> bool {
    let (host, port) = if let Some(bracketed) = domain.strip_prefix('[') {
        let Some((ipv6, rest)) = bracketed.split_once(']') else {
            return false;
        };
        if ipv6.is_empty()
            || !ipv6
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        match rest.strip_prefix(':') {
            Some(port) => ("", Some(port)),
            None if rest.is_empty() => ("", None),
            None => return false,
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    let host_ok = domain.starts_with('[') || host.split('.').all(label_ok);
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
    host_ok && port_ok
}

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
        for bad in [
            "a//b",
            "a/b/",
            "-a",
            "a--",
            "a..b",
            "a___b",
            "host.com/Repo",
            "bad_host.com/a",
            "a:-x",
            "a:",
            "a@sha256:abc",
            "a@sha256",
            "host:port/a",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad} should be refused");
        }
        assert!(ImageRef::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn docker_grammar_edge_cases() {
        check(
            "test.com:tag",
            "docker.io/library/test.com:tag",
            "docker.io",
            "library/test.com",
        );
        check(
            "test.com:5000",
            "docker.io/library/test.com:5000",
            "docker.io",
            "library/test.com",
        );
        check(
            "test.com/repo:5000",
            "test.com/repo:5000",
            "test.com",
            "repo",
        );
        check(
            "test:5000/repo",
            "test:5000/repo:latest",
            "test:5000",
            "repo",
        );
        check(
            "index.docker.io/app",
            "docker.io/library/app:latest",
            "docker.io",
            "library/app",
        );
        check(
            "a-b--c/d__e.f_g",
            "docker.io/a-b--c/d__e.f_g:latest",
            "docker.io",
            "a-b--c/d__e.f_g",
        );
        check(
            "[::1]:5000/a:t_1.x-y",
            "[::1]:5000/a:t_1.x-y",
            "[::1]:5000",
            "a",
        );
        let digest = format!("sha256:{}", "0f".repeat(32));
        let both = ImageRef::parse(&format!("127.0.0.1:5000/a/b:v2@{digest}")).expect("valid");
        assert_eq!((both.tag(), both.repository()), (Some("v2"), "a/b"));
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
