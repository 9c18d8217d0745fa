//! Placing a job's outputs where HTCondor would, from an untrusted `output.tar`.
//!
//! Three layers: [`archive`] reads members with every length bounded, [`rules`] decides from
//! the original ad whether HTCondor would bring a member back and where it would put it, and
//! [`fs`] writes it below that directory without following links, atomically, in linear time.
//!
//! # Security
//! The archive comes from the guest. What is placed is decided on the host from the job's
//! own ad ([`OutputRules`]); every other member is reported, not placed. Member paths are
//! [`capsule_manifest::RelPath`]s; only regular files and directories are written (links and
//! devices are reported); an existing path component that is not a real directory stops the
//! member; a member that fails leaves nothing behind (no temporary file, no directory made for
//! it); a file whose data is cut short is not placed. Memory does not grow with the archive:
//! names are bounded, data is copied through one buffer, and only the first
//! [`MAX_PROBLEMS`] problems are kept. Races with a concurrent writer in the user's own
//! directory are out of scope.

pub(crate) mod archive;
pub(crate) mod fs;
pub(crate) mod rules;

use std::io::Read;

use crate::temp_record::TempRecord;

pub use archive::{
    for_each_member, quote, ArchiveError, Member, MemberRefusal, SpecialKind, Unsupported,
};
pub use fs::{write_stream, PlaceError, Placer};
pub use rules::{BadOutputEntry, Destination, OutputRules, RuleRefusal};

/// Problems kept word for word; later ones are only counted.
pub const MAX_PROBLEMS: usize = 20;

/// What placing the outputs did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Files placed.
    pub files: u64,
    /// Bytes of file data placed.
    pub bytes: u64,
    /// The first [`MAX_PROBLEMS`] problems, one line each.
    pub problems: Vec<String>,
    /// Problems beyond those.
    pub more_problems: u64,
}

impl Placement {
    /// Record a problem (bounded).
    pub fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        } else {
            self.more_problems += 1;
        }
    }

    /// Whether anything went wrong.
    pub fn has_problems(&self) -> bool {
        !self.problems.is_empty()
    }

    /// The problems as one line.
    pub fn summary(&self) -> String {
        let mut text = self.problems.join("; ");
        if self.more_problems > 0 {
            text.push_str(&format!("; and {} more", self.more_problems));
        }
        text
    }
}

/// Place the members of `archive` that `rules` accept; `tag` (the job id) names temporary
/// files, each recorded in `temps` while it is written. Every problem is recorded and
/// placement goes on with the next member, except when the archive cannot be read on or the
/// destination is full.
pub fn place_outputs(
    archive: impl Read,
    rules: &OutputRules,
    tag: &str,
    temps: &TempRecord,
) -> Placement {
    place_outputs_with(archive, rules, Placer::new(tag).recording_in(temps))
}

/// [`place_outputs`] through `placer` (one whose temporary files a watchdog knows of, say).
pub fn place_outputs_with(
    archive: impl Read,
    rules: &OutputRules,
    mut placer: Placer,
) -> Placement {
    let mut placement = Placement::default();
    // Headers are read 512 bytes at a time: buffer them (large data reads pass through).
    let archive = std::io::BufReader::with_capacity(1 << 20, archive);
    let result = for_each_member(archive, &mut |member| {
        let (path, outcome) = match member {
            Member::Refused { name, reason } => {
                placement.problem(format!("output.tar entry {name} was not placed: {reason}"));
                return true;
            }
            Member::Dir { path } => {
                let outcome = match rules.destination(&path, true) {
                    Ok(Some(dest)) => placer
                        .make_dir(&dest.root, &dest.below)
                        .map_err(|e| e.to_string()),
                    Ok(None) => Ok(()),
                    Err(why) => Err(why.to_string()),
                };
                (path, outcome)
            }
            Member::File {
                path,
                mode,
                size,
                data,
            } => {
                let outcome = match rules.destination(&path, false) {
                    Ok(Some(dest)) => {
                        match placer.write_file(&dest.root, &dest.below, data, size, mode) {
                            Ok(()) => {
                                placement.files += 1;
                                placement.bytes += size;
                                Ok(())
                            }
                            Err(e) if e.is_storage_full() => {
                                placement.problem(format!(
                                    "output {} was not placed: {e}; stopped placing outputs",
                                    quote(path.as_str().as_bytes())
                                ));
                                return false;
                            }
                            Err(e) => Err(e.to_string()),
                        }
                    }
                    Ok(None) => Ok(()),
                    Err(why) => Err(why.to_string()),
                };
                (path, outcome)
            }
        };
        if let Err(why) = outcome {
            placement.problem(format!(
                "output {} was not placed: {why}",
                quote(path.as_str().as_bytes())
            ));
        }
        true
    });
    if let Err(e) = result {
        placement.problem(e.to_string());
    }
    placement
}

#[cfg(test)]
mod tests;
