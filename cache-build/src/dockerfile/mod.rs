//! Dockerfile front end: parsing, variable expansion, `.dockerignore` and build planning.
