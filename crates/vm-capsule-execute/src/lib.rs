//! vm-capsule's execute side: what runs on an execute node. The vanilla flavour's launcher
//! ([`launcher`]), `vm-capsule run` and QEMU ([`runner`], [`qemu`], [`run_files`]), the VM
//! universe's `LIBVIRT_XML_SCRIPT` ([`libvirt`]), the startd probe ([`probe`]) and Chirp
//! ([`chirp`]). It never needs the submit side.
#![forbid(unsafe_code)]

pub(crate) mod chirp;
pub mod host_paths;
pub mod launcher;
pub mod libvirt;
pub mod network;
pub mod policy;
pub mod probe;
pub mod qemu;
pub mod run_files;
pub mod runner;
