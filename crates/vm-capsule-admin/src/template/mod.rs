//! The admin's tools for templates: build one from Debian packages ([`build`]), put the
//! agent into an existing image ([`install`]) and check that a template boots and runs a job
//! ([`check`]). The template itself, as the hooks read it, is `vm_capsule_core::template`.

pub mod build;
pub mod check;
pub(crate) mod console;
pub mod elf;
pub mod install;
