//! Image names as Docker normalises them (`app:1.0` is `docker.io/library/app:1.0`).

use super::Error;

/// A normalised image name and the OCI reference name that goes with it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageName {
    /// The full name: `docker.io/library/app:1.0` (`:latest` added when no tag or digest was given).
    /// This is the `io.containerd.image.name` annotation.
    pub full: String,
    /// The reference part after the repository, as containerd's `reference.Parse(..).Object`:
    /// the tag (`1.0`), `TAG@DIGEST`, or `@DIGEST` for a name with only a digest.
    /// This is the `org.opencontainers.image.ref.name` annotation.
    pub tag: String,
}

const DOCKER_HUB: &str = "docker.io";

/// Normalises a `-t` argument as buildx does (`reference.ParseNormalizedNamed` + `TagNameOnly`).
///
/// `app:1.0` becomes `docker.io/library/app:1.0` with tag `1.0`; `127.0.0.1:5000/app` becomes
/// `127.0.0.1:5000/app:latest` with tag `latest`. Fails on names Docker refuses (uppercase
/// repositories, empty components, invalid tags or digests).
pub fn image_names(tag_arg: &str) -> Result<ImageName, Error> {
    let invalid = |reason: String| Error::InvalidName {
        name: tag_arg.to_owned(),
        reason,
    };
    if tag_arg.is_empty() {
        return Err(invalid("the name is empty".into()));
    }
    let (name_and_tag, digest) = match tag_arg.split_once('@') {
        Some((name, digest)) => {
            cache_core::digest::parse_sha256(digest).map_err(invalid)?;
            (name, Some(digest))
        }
        None => (tag_arg, None),
    };
    let last_slash = name_and_tag.rfind('/').map_or(0, |idx| idx + 1);
    let (repo, tag) = match name_and_tag[last_slash..].rfind(':') {
        Some(idx) => (
            &name_and_tag[..last_slash + idx],
            Some(&name_and_tag[last_slash + idx + 1..]),
        ),
        None => (name_and_tag, None),
    };
    if let Some(tag) = tag {
        check_tag(tag).map_err(invalid)?;
    }
    let (domain, path) = split_domain(repo);
    check_domain(&domain).map_err(invalid)?;
    check_path(&path).map_err(invalid)?;
    let repository = format!("{domain}/{path}");
    if repository.len() > 255 {
        return Err(invalid(
            "the repository name is longer than 255 characters".into(),
        ));
    }
    let (full, object) = match (tag, digest) {
        (Some(tag), Some(digest)) => (
            format!("{repository}:{tag}@{digest}"),
            format!("{tag}@{digest}"),
        ),
        (None, Some(digest)) => (format!("{repository}@{digest}"), format!("@{digest}")),
        (Some(tag), None) => (format!("{repository}:{tag}"), tag.to_owned()),
        (None, None) => (format!("{repository}:latest"), "latest".to_owned()),
    };
    Ok(ImageName { full, tag: object })
}

/// Splits `repo` into registry host and path, as `reference.ParseNormalizedNamed` does.
fn split_domain(repo: &str) -> (String, String) {
    let (domain, path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|ch| ch.is_ascii_uppercase()) =>
        {
            (first.to_owned(), rest.to_owned())
        }
        _ => (DOCKER_HUB.to_owned(), repo.to_owned()),
    };
    let domain = if domain == "index.docker.io" {
        DOCKER_HUB.to_owned()
    } else {
        domain
    };
    let path = if domain == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path
    };
    (domain, path)
}

fn check_tag(tag: &str) -> Result<(), String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag.chars().enumerate().all(|(idx, ch)| {
            ch.is_ascii_alphanumeric() || ch == '_' || (idx > 0 && ".-".contains(ch))
        });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {tag:?}: use up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
        ))
    }
}

fn check_domain(domain: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ipv6, port)) if ipv6.chars().all(|ch| ch.is_ascii_hexdigit() || ch == ':') => {
                ("ipv6", port.strip_prefix(':'))
            }
            _ => return Err(format!("invalid registry host {domain:?}")),
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    let host_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    let port_ok =
        port.is_none_or(|port| !port.is_empty() && port.chars().all(|ch| ch.is_ascii_digit()));
    if host_ok && port_ok {
        Ok(())
    } else {
        Err(format!("invalid registry host {domain:?}"))
    }
}

fn check_path(path: &str) -> Result<(), String> {
    if path.chars().any(|ch| ch.is_ascii_uppercase()) {
        return Err("repository name must be lowercase".into());
    }
    for component in path.split('/') {
        if !is_path_component(component) {
            return Err(format!(
                "invalid repository path component {component:?}: use lowercase letters and digits separated by '.', '_', '__' or '-'"
            ));
        }
    }
    Ok(())
}

/// `[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*`.
fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let is_alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    let mut idx = 0;
    while idx < bytes.len() {
        if is_alnum(bytes[idx]) {
            idx += 1;
            continue;
        }
        let start = idx;
        while idx < bytes.len() && !is_alnum(bytes[idx]) {
            idx += 1;
        }
        let sep = &component[start..idx];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(arg: &str, full: &str, tag: &str) {
        let name = image_names(arg).unwrap_or_else(|err| panic!("{arg}: {err}"));
        assert_eq!(name.full, full, "{arg}");
        assert_eq!(name.tag, tag, "{arg}");
    }

    #[test]
    fn names_are_normalised_like_buildx() {
        check("app:1.0", "docker.io/library/app:1.0", "1.0");
        check("app", "docker.io/library/app:latest", "latest");
        check("user/app", "docker.io/user/app:latest", "latest");
        check("docker.io/app:x", "docker.io/library/app:x", "x");
        check(
            "index.docker.io/user/app",
            "docker.io/user/app:latest",
            "latest",
        );
        check("127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "latest");
        check(
            "localhost/team/app:v1.2-rc_3",
            "localhost/team/app:v1.2-rc_3",
            "v1.2-rc_3",
        );
        check("ghcr.io/o/my-app__x.y:t", "ghcr.io/o/my-app__x.y:t", "t");
        let digest = cache_core::digest::sha256(b"x").to_string();
        check(
            &format!("app@{digest}"),
            &format!("docker.io/library/app@{digest}"),
            &format!("@{digest}"),
        );
        check(
            &format!("reg:5000/app:1@{digest}"),
            &format!("reg:5000/app:1@{digest}"),
            &format!("1@{digest}"),
        );
    }

    #[test]
    fn invalid_names_are_refused_with_a_reason() {
        for (arg, needle) in [
            ("", "empty"),
            ("App:1", "lowercase"),
            ("app:", "invalid tag"),
            ("app:-x", "invalid tag"),
            ("app/:1", "component"),
            ("a--/b", "component"),
            ("a..b/c", "invalid registry host"),
            ("reg:x/app", "invalid registry host"),
            ("app@sha256:zz", "digest"),
        ] {
            let err = image_names(arg).expect_err(arg).to_string();
            assert!(err.contains(needle), "{arg}: {err}");
            assert!(err.contains(&format!("{arg:?}")), "{arg}: {err}");
        }
    }
}
