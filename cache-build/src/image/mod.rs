//! OCI images: assembling config and manifest, and reading and writing OCI image layouts.
