//! Integration tests of cache-dockerfile: hostile Dockerfiles (issue 15) and the regressions
//! fuzzing found.

mod hostile;
