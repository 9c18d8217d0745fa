//! Integration tests of the classad crate, with HTCondor's own library as the oracle.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod errors;
mod fixtures;
mod matching;
mod oracle;
mod props;
