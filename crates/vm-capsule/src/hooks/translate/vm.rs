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

/// Copy the template's `.vmx`, marking the data disk independent-persistent so VMware writes
/// it in place (not into a snapshot delta) while OS disks stay snapshotted.
///
/// # Errors
/// I/O errors.
pub fn write_vmx(src: &Path, dest: &Path, data_name: &str) -> io::Result<()> {
    let text = fs::read_to_string(src)?;
    let mut out = String::new();
    let mut data_key = None;
    for line in text.lines() {
        if let Some((key, value)) = line.split_once('=') {
            let key = key.trim();
            let value = value.trim().trim_matches('"');
            if key.ends_with(".fileName") && value == data_name {
                data_key = key.strip_suffix(".fileName").map(str::to_owned);
            }
            if data_key
                .as_deref()
                .is_some_and(|k| key == format!("{k}.mode"))
            {
                continue;
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(k) = data_key {
        out.push_str(&format!("{k}.mode = \"independent-persistent\"\n"));
    }
    fs::write(dest, out)
}
