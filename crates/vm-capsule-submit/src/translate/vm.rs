//! Files of the VM around the capsule: template files linked into the job dir, the VMware
//! `.vmx` with the data disk made independent-persistent.

use std::fs;
use std::io;
use std::path::Path;

use super::plan::file_name;

/// Hard-link `file` into `dir` under its own name (never a copy); a symlink where hard links
/// cannot cross file systems. Returns the name.
///
/// # Errors
/// I/O errors.
pub fn link_into(file: &Path, dir: &Path) -> io::Result<String> {
    let name = file_name(file);
    let dest = dir.join(&name);
    if dest.exists() {
        return Ok(name);
    }
    match fs::hard_link(file, &dest) {
        Ok(()) => Ok(name),
        Err(_) => {
            let absolute = fs::canonicalize(file)?;
            std::os::unix::fs::symlink(absolute, &dest)?;
            Ok(name)
        }
    }
}

/// Copy the template's `.vmx` with the data disk made independent-persistent.
///
/// # Errors
/// I/O errors.
pub fn write_vmx(src: &Path, dest: &Path, data_name: &str) -> io::Result<()> {
    let vmx = vm_capsule_core::template::Vmx::parse(&fs::read_to_string(src)?);
    fs::write(dest, vmx.with_persistent_disk(data_name))
}
