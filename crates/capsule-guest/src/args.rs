//! The command line, parsed by hand: capsule-init has a dozen options, and clap's parser cost
//! 18-35 ms of first-run code under TCG, most of the agent's budget before the job starts.

use std::ffi::OsString;
use std::path::PathBuf;

use std::time::Duration;

use crate::agent::SourceSpec;
use crate::find::Places;

/// `--help` text.
pub const USAGE: &str = "\
Run the vm-capsule job on this VM's data disk, write its results back, then power off.

Usage: capsule-init [--data-dir DIR | --device DEV | --label LABEL | --image FILE] [OPTIONS]

Data disk (one of; default --data-dir /condor-data):
      --data-dir DIR     the data disk mounted as a directory
      --device DEV       the data disk as a block device (e.g. /dev/vdb); FAT is read in user
                         space, no mount and no vfat driver needed
      --label LABEL      the block device whose FAT volume is labelled LABEL (any case, e.g.
                         CONDORDATA), found without udev and waited for (see --wait)
      --image FILE       the data disk as an image file (raw, VMDK or qcow2)

Options:
      --wait SECS        with --label: how long to wait for the disk to appear [default: 60]
      --shipped-agent    with --label or --device: when the data disk carries a capsule-init
                         that differs from this one (the hooks' own version), run that one
      --scratch DIR      fresh scratch dir on a native file system for the work dir and the
                         staged streams [default: /var/lib/capsule]
      --as-current-user  run the job as the invoking user instead of the manifest's user
                         (tests on a host)
      --no-poweroff      exit instead of powering off (tests on a host)
  -h, --help             print this help
  -V, --version          print the version
";

/// A validated command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// Where the data disk is.
    pub source: SourceSpec,
    /// Scratch root.
    pub scratch: PathBuf,
    /// Directory with passwd and group (hidden option `--etc-dir`, for tests).
    pub etc_dir: PathBuf,
    /// `--as-current-user`.
    pub as_current_user: bool,
    /// `--no-poweroff`.
    pub no_poweroff: bool,
    /// `--wait`: how long `--label` waits for the disk.
    pub wait: Duration,
    /// `--shipped-agent`.
    pub shipped_agent: bool,
    /// Where block devices are listed and their nodes live (hidden `--sys-block`, `--dev-dir`,
    /// for tests).
    pub places: Places,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run the agent.
    Run(Args),
    /// Print [`USAGE`].
    Help,
    /// Print the version.
    Version,
}

/// Parse the arguments after the program name.
///
/// # Errors
///
/// A message naming the offending argument.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Parsed, String> {
    let mut source: Option<SourceSpec> = None;
    let mut scratch = PathBuf::from("/var/lib/capsule");
    let mut etc_dir = PathBuf::from("/etc");
    let mut as_current_user = false;
    let mut no_poweroff = false;
    let mut wait = Duration::from_secs(60);
    let mut shipped_agent = false;
    let mut places = Places::default();
    let mut it = args.into_iter();
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy().into_owned();
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (text.clone(), None),
        };
        let mut value = |what: &str| -> Result<PathBuf, String> {
            match &inline {
                Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
                Some(_) => Err(format!("{name} needs a {what}")),
                None => it
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("{name} needs a {what}")),
            }
        };
        let mut set_source = |spec: SourceSpec| match source.replace(spec) {
            None => Ok(()),
            Some(_) => Err("give only one of --data-dir, --device, --image".to_owned()),
        };
        match name.as_str() {
            "--data-dir" => set_source(SourceSpec::Dir(value("directory")?))?,
            "--device" => set_source(SourceSpec::Device(value("block device")?))?,
            "--image" => set_source(SourceSpec::Image(value("file")?))?,
            "--label" => {
                let label = value("volume label")?.to_string_lossy().into_owned();
                set_source(SourceSpec::Label(label))?;
            }
            "--wait" => {
                let secs = value("number of seconds")?;
                wait = secs
                    .to_str()
                    .and_then(|s| s.parse().ok())
                    .map(Duration::from_secs)
                    .ok_or_else(|| format!("--wait needs a number of seconds, not {secs:?}"))?;
            }
            "--shipped-agent" if inline.is_none() => shipped_agent = true,
            "--sys-block" => places.sys_block = value("directory")?,
            "--dev-dir" => places.dev = value("directory")?,
            "--scratch" => scratch = value("directory")?,
            "--etc-dir" => etc_dir = value("directory")?,
            "--as-current-user" if inline.is_none() => as_current_user = true,
            "--no-poweroff" if inline.is_none() => no_poweroff = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            _ => return Err(format!("unexpected argument {text:?}")),
        }
    }
    Ok(Parsed::Run(Args {
        source: source.unwrap_or_else(|| SourceSpec::Dir(PathBuf::from("/condor-data"))),
        scratch,
        etc_dir,
        as_current_user,
        no_poweroff,
        wait,
        shipped_agent,
        places,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Args, String> {
        match parse(args.iter().map(OsString::from))? {
            Parsed::Run(a) => Ok(a),
            other => Err(format!("{other:?}")),
        }
    }

    #[test]
    fn defaults_and_forms() {
        let a = run(&[]).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(a.source, SourceSpec::Dir(ref d) if d.as_os_str() == "/condor-data"));
        assert_eq!(a.scratch, PathBuf::from("/var/lib/capsule"));
        assert!(!a.no_poweroff && !a.as_current_user);
        let a = run(&[
            "--device",
            "/dev/vdb",
            "--scratch=/s",
            "--no-poweroff",
            "--as-current-user",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(a.source, SourceSpec::Device(ref d) if d.as_os_str() == "/dev/vdb"));
        assert_eq!(a.scratch, PathBuf::from("/s"));
        assert!(!a.shipped_agent);
        assert_eq!(a.wait, Duration::from_secs(60));
        assert!(a.no_poweroff && a.as_current_user);
        let a = run(&["--label=CONDORDATA", "--wait", "5", "--shipped-agent"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(a.source, SourceSpec::Label(ref l) if l == "CONDORDATA"));
        assert_eq!(a.wait, Duration::from_secs(5));
        assert!(a.shipped_agent);
        assert!(matches!(
            parse([OsString::from("--help")]),
            Ok(Parsed::Help)
        ));
    }

    #[test]
    fn mistakes_are_named() {
        let err = |args: &[&str]| run(args).err().unwrap_or_default();
        assert_eq!(err(&["--image"]), "--image needs a file");
        assert_eq!(err(&["--image="]), "--image needs a file");
        assert_eq!(err(&["--bogus"]), "unexpected argument \"--bogus\"");
        assert_eq!(
            err(&["--no-poweroff=yes"]),
            "unexpected argument \"--no-poweroff=yes\""
        );
        assert!(err(&["--image", "a", "--device", "b"]).contains("only one of"));
        assert!(err(&["--label", "a", "--device", "b"]).contains("only one of"));
        assert_eq!(
            err(&["--wait", "soon"]),
            "--wait needs a number of seconds, not \"soon\""
        );
    }
}
