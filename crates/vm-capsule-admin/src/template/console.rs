//! Reading a guest's serial console: which stage of a capsule boot it reached, from the lines
//! the firmware, the kernel and `capsule-init` print. Pure text in, facts out.

/// Stages of a capsule boot, in the order they happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Nothing recognisable yet.
    Nothing,
    /// The firmware found nothing to boot (SeaBIOS: "No bootable device").
    NoBootableDisk,
    /// The kernel printed its banner.
    Kernel,
    /// `capsule-init` started.
    AgentStarted,
    /// The agent gave up: no data disk with its label.
    DataDiskNotFound,
    /// The job was started.
    JobStarted,
    /// The job ended.
    JobEnded,
    /// `result.json` is on the data disk.
    ResultWritten,
}

/// What the console shows so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// Firmware boot failure lines.
    pub no_bootable: bool,
    /// The kernel's banner (`Linux version ...`).
    pub kernel: bool,
    /// A login prompt: the guest finished booting without (or after) the agent.
    pub login_prompt: bool,
    /// `capsule-init ... started`.
    pub agent_started: bool,
    /// `capsule-init ... no data disk labelled ...`: the whole line.
    pub data_disk_missing: Option<String>,
    /// `capsule-init ... starting <job>`.
    pub job_started: bool,
    /// `capsule-init ... job ended`.
    pub job_ended: bool,
    /// `capsule-init ... result.json written`.
    pub result_written: bool,
    /// A kernel panic line.
    pub panic: Option<String>,
    /// The last `capsule-init ... error:` line.
    pub agent_error: Option<String>,
}

/// The part of an agent line after its `capsule-init [ uptime]: ` stamp.
fn agent_message(line: &str) -> Option<&str> {
    let at = line.find("capsule-init [")?;
    let rest = &line[at..];
    let close = rest.find("]: ")?;
    Some(&rest[close + 3..])
}

impl Seen {
    /// Take in one console line.
    pub fn feed(&mut self, line: &str) {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.contains("No bootable device") || line.contains("Boot failed: not a bootable disk")
        {
            self.no_bootable = true;
        }
        if line.contains("Linux version ") {
            self.kernel = true;
        }
        if line.trim_end().ends_with(" login:") {
            self.login_prompt = true;
        }
        if line.contains("Kernel panic") && self.panic.is_none() {
            self.panic = Some(line.trim().to_owned());
        }
        let Some(msg) = agent_message(line) else {
            return;
        };
        if msg.starts_with("started") {
            self.agent_started = true;
        } else if msg.starts_with("no data disk labelled")
            || msg.contains("error: no data disk labelled")
        {
            self.data_disk_missing = Some(msg.to_owned());
        } else if msg.starts_with("starting ") {
            self.job_started = true;
        } else if msg.starts_with("job ended") {
            self.job_ended = true;
        } else if msg.starts_with("result.json written") {
            self.result_written = true;
        }
        if let Some(e) = msg.strip_prefix("error: ") {
            if e.starts_with("no data disk labelled") {
                self.data_disk_missing = Some(e.to_owned());
            }
            self.agent_error = Some(e.to_owned());
        }
    }

    /// Take in a whole console text.
    pub fn feed_all(&mut self, text: &str) {
        for line in text.lines() {
            self.feed(line);
        }
    }

    /// The furthest stage reached.
    pub fn stage(&self) -> Stage {
        if self.result_written {
            Stage::ResultWritten
        } else if self.job_ended {
            Stage::JobEnded
        } else if self.job_started {
            Stage::JobStarted
        } else if self.data_disk_missing.is_some() {
            Stage::DataDiskNotFound
        } else if self.agent_started {
            Stage::AgentStarted
        } else if self.kernel {
            Stage::Kernel
        } else if self.no_bootable {
            Stage::NoBootableDisk
        } else {
            Stage::Nothing
        }
    }
}

/// The last `n` non-empty lines of `text`, control characters removed, for a message.
pub fn tail(text: &str, n: usize) -> Vec<String> {
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(text: &str) -> Seen {
        let mut s = Seen::default();
        s.feed_all(text);
        s
    }

    #[test]
    fn stages_from_real_console_lines() {
        let bios = "\u{1b}cSeaBIOS (version 1.16.2-debian-1.16.2-1)\r\nBooting from Hard Disk...\r\nBoot failed: not a bootable disk\r\n\r\nNo bootable device.\r\n";
        assert_eq!(seen(bios).stage(), Stage::NoBootableDisk);
        let kernel = "[    0.000000] Linux version 6.1.0-13-amd64 (debian-kernel@lists.debian.org)\n\nDebian GNU/Linux 12 capsule ttyS0\n\ncapsule login: ";
        let s = seen(kernel);
        assert_eq!(s.stage(), Stage::Kernel);
        assert!(s.login_prompt);
        // journald's console forwarding prefixes the agent's own stamp.
        let agent = "[   23.86] capsule-init[227]: capsule-init [ 23.737022]: started (pid 227)\n\
                     [   23.97] capsule-init[227]: capsule-init [ 23.946854]: error: no data disk labelled CONDORDATA after 120 s; block devices seen: vda (no FAT volume)\n";
        let s = seen(agent);
        assert_eq!(s.stage(), Stage::DataDiskNotFound);
        assert!(s
            .data_disk_missing
            .as_deref()
            .unwrap_or_default()
            .starts_with("no data disk labelled CONDORDATA"));
        let done = "capsule-init [  2.1]: started (pid 1)\ncapsule-init [  2.5]: starting \"job.sh\" as condor (uid 1000)\ncapsule-init [  2.9]: job ended: Exited { code: 0 }\ncapsule-init [  3.0]: result.json written: Exited { code: 0 }\n";
        assert_eq!(seen(done).stage(), Stage::ResultWritten);
        let panic = "[    2.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)\n";
        assert!(seen(panic).panic.is_some());
    }

    #[test]
    fn tail_strips_control_characters() {
        assert_eq!(tail("a\n\u{1b}[0mb\n\nc\r\n", 2), vec!["[0mb", "c"]);
    }
}
