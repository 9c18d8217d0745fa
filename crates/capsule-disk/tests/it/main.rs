//! Integration tests for capsule-disk: round trips checked with the real tools
//! (fsck.fat, mtools, qemu-img) in both directions.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap
)]

mod bulk;
mod containers;
mod corrupt;
mod full;
mod mixed;
mod qcow2;
mod raw_fat;
mod references;
mod tar;
mod tools;
mod vmdk;
