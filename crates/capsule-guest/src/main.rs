//! capsule-init: the guest agent (work in progress).

fn main() {}
