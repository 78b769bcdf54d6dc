//! `build --secret`, `--ssh`, `--network` and `--allow`: the RUN inputs besides the Dockerfile.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cache_build::dockerfile::Network;
use cache_build::engine::{RunOptions, SecretSource};

/// Parses one `--secret`: `id=X,src=FILE`, `id=X,env=VAR`, `id=X` (env variable X, else the file
/// X), with buildx's optional `type=file|env`.
pub fn parse_secret(value: &str) -> anyhow::Result<(String, SecretSource)> {
    let bad = |why: &str| {
        anyhow::format_err!(
            "invalid --secret {value:?}: {why} (use id=ID,src=FILE or id=ID,env=VAR)"
        )
    };
    let mut id = None;
    let mut kind = None;
    let mut src = None;
    let mut env = None;
    for field in value.split(',') {
        let (key, val) = field
            .split_once('=')
            .ok_or_else(|| bad(&format!("{field:?} is not key=value")))?;
        match key.to_ascii_lowercase().as_str() {
            "id" => id = Some(val.to_owned()),
            "type" => kind = Some(val.to_owned()),
            "src" | "source" => src = Some(val.to_owned()),
            "env" => env = Some(val.to_owned()),
            other => return Err(bad(&format!("unknown key {other:?}"))),
        }
    }
    let id = match id {
        Some(id) if !id.is_empty() => id,
        _ => return Err(bad("id is missing")),
    };
    let source = match (kind.as_deref(), src, env) {
        (_, Some(_), Some(_)) => return Err(bad("give either src or env, not both")),
        (Some("env"), Some(var), None) | (None | Some("env"), None, Some(var)) => {
            SecretSource::Env(var)
        }
        (None | Some("file"), Some(path), None) => SecretSource::File(PathBuf::from(path)),
        (Some("file"), None, Some(_)) => return Err(bad("type=file takes src, not env")),
        (Some("file"), None, None) => SecretSource::File(PathBuf::from(&id)),
        (Some("env"), None, None) => SecretSource::Env(id.clone()),
        (None, None, None) => {
            if std::env::var_os(&id).is_some() {
                SecretSource::Env(id.clone())
            } else {
                SecretSource::File(PathBuf::from(&id))
            }
        }
        (Some(other), _, _) => return Err(bad(&format!("unknown type {other:?}"))),
    };
    Ok((id, source))
}

/// Parses one `--ssh`: `default` or `ID` (the agent of `SSH_AUTH_SOCK`), or `ID=SOCKET`.
///
/// Only agent sockets are forwarded; a key file is refused with the way to load it into an agent.
pub fn parse_ssh(value: &str) -> anyhow::Result<(String, PathBuf)> {
    let (id, paths) = match value.split_once('=') {
        Some((id, paths)) => (id, Some(paths)),
        None => (value, None),
    };
    if id.is_empty() {
        anyhow::bail!("invalid --ssh {value:?}: the id is missing (use default or ID=SOCKET)");
    }
    let path = match paths {
        Some(paths) => {
            let mut parts = paths.split(',');
            let first = parts.next().unwrap_or_default();
            if parts.next().is_some() {
                anyhow::bail!(
                    "invalid --ssh {value:?}: buildcache forwards one agent socket per id; load the keys into one agent (ssh-add) and pass its socket"
                );
            }
            PathBuf::from(first)
        }
        None => match std::env::var_os("SSH_AUTH_SOCK") {
            Some(sock) if !sock.is_empty() => PathBuf::from(sock),
            _ => anyhow::bail!(
                "--ssh {value}: SSH_AUTH_SOCK is not set; start an agent (eval $(ssh-agent); ssh-add) or pass --ssh {id}=/path/to/agent.sock"
            ),
        },
    };
    check_socket(value, &path)?;
    Ok((id.to_owned(), path))
}

fn check_socket(value: &str, path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path)
        .map_err(|err| anyhow::format_err!("--ssh {value}: {}: {err}", path.display()))?;
    if meta.file_type().is_socket() {
        return Ok(());
    }
    anyhow::bail!(
        "--ssh {value}: {} is not an SSH agent socket; buildcache forwards agents only: load a key with `eval $(ssh-agent) && ssh-add {}` and pass --ssh ID=$SSH_AUTH_SOCK",
        path.display(),
        path.display()
    )
}

/// Builds the RUN options from the flags; `mounts_dir` is where cache mounts persist.
pub fn run_options(
    secrets: &[String],
    ssh: &[String],
    network: Option<&str>,
    allow: &[String],
    mounts_dir: PathBuf,
) -> anyhow::Result<RunOptions> {
    let mut secret_map = BTreeMap::new();
    for value in secrets {
        let (id, source) = parse_secret(value)?;
        secret_map.insert(id, source);
    }
    let mut ssh_map = BTreeMap::new();
    for value in ssh {
        let (id, path) = parse_ssh(value)?;
        ssh_map.insert(id, path);
    }
    let network = match network {
        None => Network::Default,
        Some(value) => Network::parse(value)
            .map_err(|err| anyhow::format_err!("invalid --network {value:?}: {err}"))?,
    };
    let mut run = RunOptions {
        cache_mounts: Some(mounts_dir),
        secrets: secret_map,
        ssh: ssh_map,
        network,
        allow_network_host: false,
        allow_insecure: false,
        cache_mount_seeds: BTreeMap::new(),
    };
    for value in allow {
        for entitlement in value.split(',') {
            match entitlement {
                "network.host" => run.allow_network_host = true,
                "security.insecure" => run.allow_insecure = true,
                other => anyhow::bail!(
                    "invalid --allow {other:?}: use network.host or security.insecure"
                ),
            }
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_parse_like_buildx() {
        assert_eq!(
            parse_secret("id=tok,src=/run/tok").expect("valid"),
            ("tok".into(), SecretSource::File("/run/tok".into()))
        );
        assert_eq!(
            parse_secret("id=tok,env=TOKEN").expect("valid"),
            ("tok".into(), SecretSource::Env("TOKEN".into()))
        );
        assert_eq!(
            parse_secret("type=file,id=f").expect("valid"),
            ("f".into(), SecretSource::File("f".into()))
        );
        for bad in [
            "src=x",
            "id=a,src=x,env=Y",
            "id=a,colour=red",
            "id=a,type=web",
            "id",
        ] {
            let err = parse_secret(bad).expect_err(bad).to_string();
            assert!(err.contains("invalid --secret"), "{err}");
        }
    }

    #[test]
    fn ssh_takes_sockets_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("agent.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let (id, path) = parse_ssh(&format!("work={}", sock.display())).expect("a socket");
        assert_eq!((id.as_str(), path), ("work", sock));
        let key = dir.path().join("id_ed25519");
        std::fs::write(&key, "key").expect("write");
        let err = parse_ssh(&format!("work={}", key.display()))
            .expect_err("a key file")
            .to_string();
        assert!(err.contains("ssh-add"), "{err}");
    }

    #[test]
    fn entitlements_and_network() {
        let run = run_options(
            &[],
            &[],
            Some("none"),
            &["security.insecure,network.host".into()],
            "/m".into(),
        )
        .expect("valid");
        assert!(run.allow_insecure && run.allow_network_host);
        assert_eq!(run.network, Network::None);
        assert!(run_options(&[], &[], Some("bridge"), &[], "/m".into()).is_err());
        assert!(run_options(&[], &[], None, &["device".into()], "/m".into()).is_err());
    }
}
