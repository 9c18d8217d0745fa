//! A VMware `.vmx`, parsed once: its lines, and the disks it names (`<dev>.fileName`).

/// A `.vmx` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vmx {
    lines: Vec<String>,
}

/// One disk a `.vmx` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmxDisk {
    /// The device key (`scsi0:1`, `ide0:0`).
    pub key: String,
    /// The `.vmdk` file.
    pub file: String,
}

impl Vmx {
    /// Parse the text of a `.vmx`.
    pub fn parse(text: &str) -> Vmx {
        Vmx {
            lines: text.lines().map(str::to_owned).collect(),
        }
    }

    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
        })
    }

    /// The `.vmdk` disks it names, in file order.
    pub fn disks(&self) -> Vec<VmxDisk> {
        self.pairs()
            .filter(|(k, v)| k.ends_with(".fileName") && v.ends_with(".vmdk"))
            .filter_map(|(k, v)| {
                Some(VmxDisk {
                    key: k.strip_suffix(".fileName")?.to_owned(),
                    file: v.to_owned(),
                })
            })
            .collect()
    }

    /// The text with disk `file` made independent-persistent (VMware then writes it in place,
    /// not into a snapshot delta, while the other disks stay snapshotted).
    pub fn with_persistent_disk(&self, file: &str) -> String {
        let key = self
            .disks()
            .into_iter()
            .find(|d| d.file == file)
            .map(|d| d.key);
        let mode_key = key.as_ref().map(|k| format!("{k}.mode"));
        let mut out = String::new();
        for line in &self.lines {
            let is_mode = line
                .split_once('=')
                .is_some_and(|(k, _)| Some(k.trim()) == mode_key.as_deref());
            if !is_mode {
                out.push_str(line);
                out.push('\n');
            }
        }
        if let Some(k) = key {
            out.push_str(&format!("{k}.mode = \"independent-persistent\"\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disks_and_the_persistent_data_disk() {
        let vmx = Vmx::parse(
            "config.version = \"8\"\nscsi0:0.fileName = \"os.vmdk\"\nscsi0:1.fileName = \"data.vmdk\"\nscsi0:1.mode = \"persistent\"\n",
        );
        let disks = vmx.disks();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[1].key, "scsi0:1");
        let out = vmx.with_persistent_disk("data.vmdk");
        assert!(out.contains("scsi0:1.mode = \"independent-persistent\""));
        assert!(!out.contains("\"persistent\""));
        assert!(out.contains("scsi0:0.fileName"));
    }
}
