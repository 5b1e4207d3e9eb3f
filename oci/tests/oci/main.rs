//! The crate against a real registry (`registry`, which needs Debian's
//! `docker-registry` package: `/usr/bin/docker-registry`) and against a
//! tiny local server for token auth, redirects and broken answers
//! (`mock`).

mod mock;
mod registry;
mod support;
