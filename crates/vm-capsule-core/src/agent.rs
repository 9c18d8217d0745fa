//! The guest agent file (`VM_CAPSULE_INIT_SCRIPT_PATH`) as the hooks ship it: it must be a
//! static x86_64 program, since a minimal guest has no dynamic loader (a dynamic agent fails
//! in the guest with "capsule-init: not found" and every job comes back with exit code 125).
//!
//! Only the ELF header and program headers are read (bounded); a script (`#!`) is accepted
//! as it is, the guest's own interpreter runs it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use thiserror::Error;

/// The knob naming the agent.
pub const AGENT_KNOB: &str = crate::settings::knobs::INIT_SCRIPT_PATH.name;
/// ELF `e_machine` of x86_64.
const EM_X86_64: u16 = 62;
/// ELF program header type of the dynamic loader's path.
const PT_INTERP: u32 = 3;
/// More program headers than any real executable has.
const MAX_PHDRS: u16 = 512;

/// How a program file is linked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Linkage {
    /// An ELF without a dynamic loader (static or static-pie).
    Static,
    /// An ELF that needs the named loader at run time.
    Dynamic {
        /// `PT_INTERP`, e.g. `/lib64/ld-linux-x86-64.so.2`.
        interpreter: String,
    },
    /// A `#!` script.
    Script,
}

/// Why an agent file cannot be shipped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The file cannot be read.
    #[error("the guest agent {path} ({AGENT_KNOB}) cannot be read; hint: install capsule-init there or point {AGENT_KNOB} at it")]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a program we understand.
    #[error(
        "the guest agent {path} ({AGENT_KNOB}) is not an x86_64 Linux program or script: {why}"
    )]
    NotAProgram {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// A dynamically linked agent.
    #[error("the guest agent {path} ({AGENT_KNOB}) is dynamically linked (it needs {interpreter}), so it cannot start in a minimal guest; hint: use a static build: `cargo build --release` in the vm-capsule workspace builds one (target/x86_64-unknown-linux-gnu/release/capsule-init), the packages install /usr/libexec/vm-capsule/capsule-init")]
    Dynamic {
        /// The file.
        path: PathBuf,
        /// Its loader.
        interpreter: String,
    },
}

/// Why the first 64 bytes of a file, `head`, are not those of an x86_64 ELF program
/// (`None`: they are).
pub fn x86_64_elf_problem(head: &[u8]) -> Option<&'static str> {
    if !head.starts_with(b"\x7fELF") || head.len() < 64 {
        return Some("no ELF header");
    }
    if head.get(4) != Some(&2) || head.get(5) != Some(&1) {
        return Some("not a 64-bit little-endian ELF");
    }
    if le16(head, 18) != Some(EM_X86_64) {
        return Some("not built for x86_64");
    }
    None
}

/// How the program at `path` is linked.
///
/// # Errors
/// [`AgentError::Unreadable`] when it cannot be read, [`AgentError::NotAProgram`] when it is
/// neither an x86_64 ELF executable nor a script.
pub fn linkage(path: &Path) -> Result<Linkage, AgentError> {
    let unreadable = |source| AgentError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let not_program = |why: &str| AgentError::NotAProgram {
        path: path.to_owned(),
        why: why.to_owned(),
    };
    let mut f = File::open(path).map_err(unreadable)?;
    let mut head = [0u8; 64];
    let n = read_up_to(&mut f, &mut head).map_err(unreadable)?;
    let head = head.get(..n).unwrap_or_default();
    if head.starts_with(b"#!") {
        return Ok(Linkage::Script);
    }
    if let Some(why) = x86_64_elf_problem(head) {
        return Err(not_program(why));
    }
    let phoff = le64(head, 32).ok_or_else(|| not_program("short header"))?;
    let phentsize = le16(head, 54).ok_or_else(|| not_program("short header"))?;
    let phnum = le16(head, 56).ok_or_else(|| not_program("short header"))?;
    if phnum > MAX_PHDRS || phentsize < 56 {
        return Err(not_program("implausible program headers"));
    }
    for i in 0..u64::from(phnum) {
        let at = i
            .checked_mul(u64::from(phentsize))
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| not_program("program header offset overflows"))?;
        let mut ph = [0u8; 56];
        f.seek(SeekFrom::Start(at)).map_err(unreadable)?;
        if read_up_to(&mut f, &mut ph).map_err(unreadable)? < ph.len() {
            return Err(not_program("truncated program headers"));
        }
        if le32(&ph, 0) == Some(PT_INTERP) {
            let off = le64(&ph, 8).unwrap_or(0);
            let size = le64(&ph, 32).unwrap_or(0).min(4096);
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            f.seek(SeekFrom::Start(off)).map_err(unreadable)?;
            let got = read_up_to(&mut f, &mut buf).map_err(unreadable)?;
            let interp = buf.get(..got).unwrap_or_default();
            let interp = interp.split(|b| *b == 0).next().unwrap_or_default();
            return Ok(Linkage::Dynamic {
                interpreter: String::from_utf8_lossy(interp).into_owned(),
            });
        }
    }
    Ok(Linkage::Static)
}

/// Check that the agent at `path` can be shipped to a guest (static or a script).
///
/// # Errors
/// [`AgentError`] saying what is wrong and how to fix it.
pub fn check_shippable(path: &Path) -> Result<Linkage, AgentError> {
    match linkage(path)? {
        Linkage::Dynamic { interpreter } => Err(AgentError::Dynamic {
            path: path.to_owned(),
            interpreter,
        }),
        other => Ok(other),
    }
}

/// The version a static agent reports (`capsule-init 0.1.0` -> `0.1.0`), by running it with
/// `--version`; `None` for anything else.
pub fn version(path: &Path) -> Option<String> {
    if linkage(path).ok()? != Linkage::Static {
        return None;
    }
    let out = Command::new(path).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().strip_prefix("capsule-init ")?;
    Some(v.to_owned())
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(buf.get_mut(n..).unwrap_or_default())? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn this_test_binary_is_static_and_bin_sh_is_dynamic() {
        // The workspace builds everything with crt-static (.cargo/config.toml).
        let me = std::env::current_exe().unwrap();
        assert_eq!(linkage(&me).unwrap(), Linkage::Static);
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        match check_shippable(&sh) {
            Err(AgentError::Dynamic { interpreter, .. }) => {
                assert!(interpreter.contains("ld-linux"), "{interpreter}");
            }
            other => panic!("{other:?}"),
        }
        let msg = check_shippable(&sh).unwrap_err().to_string();
        assert!(msg.contains(AGENT_KNOB) && msg.contains("static"), "{msg}");
    }

    #[test]
    fn scripts_pass_and_junk_is_named() {
        let d = tempfile::tempdir().unwrap();
        let script = d.path().join("agent.sh");
        std::fs::write(&script, "#!/bin/sh\nexec /sbin/capsule-init \"$@\"\n").unwrap();
        assert_eq!(check_shippable(&script).unwrap(), Linkage::Script);
        let junk = d.path().join("junk");
        std::fs::write(&junk, vec![0x7f, b'E', b'L', b'F', 1, 1]).unwrap();
        assert!(matches!(
            linkage(&junk),
            Err(AgentError::NotAProgram { .. })
        ));
        let missing = d.path().join("nope");
        let msg = linkage(&missing).unwrap_err().to_string();
        assert!(msg.contains("nope") && msg.contains(AGENT_KNOB), "{msg}");
    }
}
