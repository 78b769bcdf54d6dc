//! RUN isolation: executing a command inside a root filesystem with its own namespaces.
