//! Build context: selecting and hashing COPY/ADD sources, and copying them with Docker semantics.
