//! Maps filesystem failures to backend error kinds, in one place.

use std::io;
use std::path::Path;

use cache_core::{Error, ErrorKind};

/// Turns an I/O failure while doing `what` on `path` into a backend [`Error`].
///
/// The message names the operation and the path, and says how to fix it where the user can.
pub(crate) fn parse_error(what: &str, path: &Path, err: io::Error) -> Error {
    if let Some(inner) = err
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
    {
        // A stream carried one of our own errors (a digest mismatch): keep its kind.
        let kind = inner.kind();
        return Error::new(kind, format!("{what} {}", path.display())).with_source(err);
    }
    let (kind, hint) = match err.kind() {
        io::ErrorKind::NotFound => (ErrorKind::NotFound, ""),
        io::ErrorKind::AlreadyExists => (ErrorKind::AlreadyExists, ""),
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => (
            ErrorKind::Denied,
            " (check that this user may read and write the cache directory)",
        ),
        io::ErrorKind::InvalidData | io::ErrorKind::UnexpectedEof => (ErrorKind::Corrupt, ""),
        io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory => (
            ErrorKind::InvalidConfig,
            " (the cache location must be a directory holding an OCI image layout)",
        ),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => (
            ErrorKind::Unexpected,
            " (free some disk space or export to another directory)",
        ),
        _ => (ErrorKind::Unexpected, ""),
    };
    let temporary = matches!(
        err.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    );
    Error::new(kind, format!("{what} {}{hint}", path.display()))
        .with_source(err)
        .set_temporary(temporary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_messages() {
        let path = Path::new("/cache/index.json");
        let err = parse_error("reading", path, io::Error::from(io::ErrorKind::NotFound));
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().starts_with("reading /cache/index.json"));
        let err = parse_error(
            "writing",
            path,
            io::Error::from(io::ErrorKind::PermissionDenied),
        );
        assert_eq!(err.kind(), ErrorKind::Denied);
        assert!(err.to_string().contains("check that this user"), "{err}");
        let err = parse_error("reading", path, io::Error::from(io::ErrorKind::Interrupted));
        assert!(err.is_temporary());
        let inner = Error::new(ErrorKind::DigestMismatch, "bad");
        let err = parse_error("reading", path, io::Error::other(inner));
        assert_eq!(err.kind(), ErrorKind::DigestMismatch);
    }
}
