//! `vm-capsule disk`: the admin's replacement for qemu-img + mtools on data disks. Create a FAT
//! data disk in a raw, VMDK or qcow2 image, put files in, get them out, list, describe.
//! The image format is read from the content (or forced with `--format`).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use capsule_disk::{parse_size, Access, CreateOptions, DataDisk, ImageFormat, OpenOptions};
use clap::{Args, Subcommand};

/// Data disk tools.
#[derive(Debug, Subcommand)]
pub enum DiskCommand {
    /// Create a data disk: an MBR with one FAT partition, formatted, in a sparse image.
    Create(CreateArgs),
    /// Copy host files and directories (recursively) into the disk.
    Put(PutArgs),
    /// Copy a file or directory out of the disk (`-` writes a file to stdout).
    Get(GetArgs),
    /// List a directory of the disk.
    Ls(LsArgs),
    /// Describe the image: container, chain, partition table, FAT type, label, space.
    Info(InfoArgs),
}

/// How to open an existing image.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// The image file or block device.
    image: PathBuf,
    /// Force the container format instead of detecting it from the content.
    #[arg(long, value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Use this partition (1-based) instead of the first FAT partition.
    #[arg(long)]
    partition: Option<u32>,
}

/// Arguments of `disk create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The image to create (overwritten if it exists).
    image: PathBuf,
    /// Virtual disk size: 512M, 4G, ... (powers of 1024).
    #[arg(long, value_parser = parse_bytes)]
    size: u64,
    /// Container format; default from the file extension (.vmdk, .qcow2), else raw.
    #[arg(long, value_parser = parse_format)]
    format: Option<ImageFormat>,
    /// Byte offset of the FAT partition (32256 is the 2009 plugin's, i.e. sector 63).
    #[arg(long, value_parser = parse_bytes, default_value = "1M")]
    offset: u64,
    /// Volume label (up to 11 characters).
    #[arg(long, default_value = "CONDORDATA")]
    label: String,
}

/// Arguments of `disk put`.
#[derive(Debug, Args)]
pub struct PutArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Host files or directories to copy in (directories recursively; symlinks are skipped).
    #[arg(required = true)]
    src: Vec<PathBuf>,
    /// Directory inside the disk to copy into (created if missing).
    #[arg(long, default_value = "/")]
    to: String,
}

/// Arguments of `disk get`.
#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Path inside the disk.
    path: String,
    /// Host destination (default: the name in the current directory); `-` for stdout.
    dest: Option<PathBuf>,
}

/// Arguments of `disk ls`.
#[derive(Debug, Args)]
pub struct LsArgs {
    #[command(flatten)]
    open: OpenArgs,
    /// Directory inside the disk (default: the root).
    #[arg(default_value = "/")]
    path: String,
    /// Long listing: size, modification time, name.
    #[arg(short = 'l')]
    long: bool,
}

/// Arguments of `disk info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    #[command(flatten)]
    open: OpenArgs,
}

fn parse_format(s: &str) -> Result<ImageFormat, String> {
    s.parse().map_err(|e: capsule_disk::Error| e.to_string())
}

fn parse_bytes(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// Run a `disk` subcommand.
pub fn run(cmd: DiskCommand) -> Result<ExitCode> {
    match cmd {
        DiskCommand::Create(a) => create(&a),
        DiskCommand::Put(a) => put(&a),
        DiskCommand::Get(a) => get(&a),
        DiskCommand::Ls(a) => ls(&a, &mut io::stdout().lock()),
        DiskCommand::Info(a) => info(&a, &mut io::stdout().lock()),
    }?;
    Ok(ExitCode::SUCCESS)
}

fn open(a: &OpenArgs, access: Access) -> Result<DataDisk> {
    let opts = OpenOptions::new()
        .access(access)
        .format(a.format)
        .partition(a.partition);
    DataDisk::open_with(&a.image, &opts)
        .with_context(|| format!("cannot open data disk {}", a.image.display()))
}

fn create(a: &CreateArgs) -> Result<()> {
    let format = a.format.unwrap_or_else(|| {
        match a
            .image
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("vmdk") => ImageFormat::Vmdk,
            Some("qcow2") => ImageFormat::Qcow2,
            _ => ImageFormat::Raw,
        }
    });
    let opts = CreateOptions::new()
        .size(a.size)
        .format(format)
        .partition_offset(a.offset)
        .label(a.label.clone());
    let disk = DataDisk::create(&a.image, &opts)
        .with_context(|| format!("cannot create {}", a.image.display()))?;
    disk.finish()
        .with_context(|| format!("cannot finish {}", a.image.display()))
}

fn put(a: &PutArgs) -> Result<()> {
    let disk = open(&a.open, Access::ReadWrite)?;
    disk.create_dir_all(&a.to)?;
    for src in &a.src {
        let name = src
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("{}: needs a UTF-8 file name", src.display()))?;
        put_path(&disk, src, &join(&a.to, name))?;
    }
    disk.finish()
        .with_context(|| format!("cannot finish {}", a.open.image.display()))
}

/// Copy one host path (file or directory tree) to `dest` in the disk. Symlinks are skipped
/// with a warning, never followed.
fn put_path(disk: &DataDisk, src: &Path, dest: &str) -> Result<()> {
    let meta =
        fs::symlink_metadata(src).with_context(|| format!("cannot stat {}", src.display()))?;
    if meta.file_type().is_symlink() {
        eprintln!("vm-capsule: warning: skipping symlink {}", src.display());
    } else if meta.is_dir() {
        disk.create_dir_all(dest)?;
        let mut entries: Vec<_> = fs::read_dir(src)
            .with_context(|| format!("cannot read directory {}", src.display()))?
            .collect::<io::Result<_>>()?;
        entries.sort_by_key(fs::DirEntry::file_name);
        for e in entries {
            let name = e.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{}: non-UTF-8 name", e.path().display()))?;
            put_path(disk, &e.path(), &join(dest, name))?;
        }
    } else if meta.is_file() {
        let mut f =
            fs::File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
        disk.put_file(dest, &mut f)?;
    } else {
        eprintln!(
            "vm-capsule: warning: skipping special file {}",
            src.display()
        );
    }
    Ok(())
}

fn join(dir: &str, name: &str) -> String {
    let d = dir.trim_end_matches('/');
    if d.is_empty() {
        name.to_owned()
    } else {
        format!("{d}/{name}")
    }
}

fn get(a: &GetArgs) -> Result<()> {
    let disk = open(&a.open, Access::ReadOnly)?;
    let info = disk
        .stat(&a.path)?
        .with_context(|| format!("'{}' not found in the data disk", a.path))?;
    let base = a
        .path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("")
        .to_owned();
    if !info.is_dir {
        if a.dest.as_deref() == Some(Path::new("-")) {
            let mut out = io::stdout().lock();
            disk.open_file(&a.path)?.copy_to(&mut out)?;
            return Ok(out.flush()?);
        }
        let dest = match &a.dest {
            Some(d) if d.is_dir() => d.join(&base),
            Some(d) => d.clone(),
            None => PathBuf::from(&base),
        };
        return write_file(&disk, &a.path, &dest);
    }
    if a.dest.as_deref() == Some(Path::new("-")) {
        bail!("'{}' is a directory; give a host directory, not -", a.path);
    }
    let dest = match &a.dest {
        Some(d) => d.clone(),
        None if base.is_empty() => PathBuf::from("."),
        None => PathBuf::from(&base),
    };
    make_dir(&dest)?;
    for (rel, e) in disk.walk(&a.path)? {
        // walk() has checked every name: no '/', '..', '.', NUL.
        let target = dest.join(&rel);
        if e.is_dir {
            make_dir(&target)?;
        } else {
            write_file(&disk, &join(&a.path, &rel), &target)?;
        }
    }
    Ok(())
}

fn make_dir(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => bail!("{} exists and is not a directory", p.display()),
        Err(_) => {
            fs::create_dir(p).with_context(|| format!("cannot create directory {}", p.display()))
        }
    }
}

/// Write a disk file to a host path, replacing a regular file but never writing through a
/// symlink: the data goes to a temporary file that is renamed into place.
fn write_file(disk: &DataDisk, path: &str, dest: &Path) -> Result<()> {
    if let Ok(m) = fs::symlink_metadata(dest) {
        if !m.is_file() {
            bail!(
                "{} exists and is not a regular file; not overwriting it",
                dest.display()
            );
        }
    }
    let dir = dest
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("out");
    let tmp = dir.join(format!(".{name}.vm-capsule-tmp"));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let copied = disk
        .open_file(path)?
        .copy_to(&mut f)
        .with_context(|| format!("copying '{path}' out"));
    if let Err(e) = copied {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    drop(f);
    fs::rename(&tmp, dest)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), dest.display()))
}

fn ls(a: &LsArgs, out: &mut dyn Write) -> Result<()> {
    let disk = open(&a.open, Access::ReadOnly)?;
    let mut entries = disk.list(&a.path)?;
    entries.sort_by(|x, y| x.name.cmp(&y.name));
    for e in entries {
        let suffix = if e.is_dir { "/" } else { "" };
        if a.long {
            writeln!(
                out,
                "{:>12} {} {}{suffix}",
                e.size,
                format_time(e.modified),
                e.name
            )?;
        } else {
            writeln!(out, "{}{suffix}", e.name)?;
        }
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` for seconds since the epoch (civil-from-days).
fn format_time(secs: u64) -> String {
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60
    )
}

fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes;
    let mut i = 0;
    while v >= 1024 * 10 && i + 1 < units.len() {
        v /= 1024;
        i += 1;
    }
    format!("{bytes} ({v} {})", units.get(i).unwrap_or(&"B"))
}

fn info(a: &InfoArgs, out: &mut dyn Write) -> Result<()> {
    let disk = open(&a.open, Access::ReadOnly)?;
    let i = disk.info()?;
    let c = &i.container;
    writeln!(out, "container:   {} ({})", c.format, c.subformat)?;
    writeln!(out, "virtual:     {}", human(c.virtual_size))?;
    let files: Vec<String> = c.files.iter().map(|f| f.display().to_string()).collect();
    writeln!(out, "files:       {}", files.join(", "))?;
    if !c.backing_chain.is_empty() {
        let chain: Vec<String> = c
            .backing_chain
            .iter()
            .map(|f| f.display().to_string())
            .collect();
        writeln!(out, "chain:       {}", chain.join(" <- "))?;
    }
    writeln!(out, "partitions:  {}", i.table)?;
    writeln!(
        out,
        "partition:   #{} at byte {}, {} bytes, type {}",
        i.partition.index, i.partition.start, i.partition.size, i.partition.kind
    )?;
    writeln!(
        out,
        "filesystem:  {}, cluster {} bytes",
        i.fat, i.cluster_size
    )?;
    writeln!(out, "label:       {}", i.label)?;
    writeln!(
        out,
        "serial:      {:04X}-{:04X}",
        i.volume_id >> 16,
        i.volume_id & 0xffff
    )?;
    writeln!(out, "capacity:    {}", human(i.capacity))?;
    writeln!(
        out,
        "used:        {}",
        human(i.capacity.saturating_sub(i.free))
    )?;
    writeln!(out, "free:        {}", human(i.free))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn open_args(image: &Path) -> OpenArgs {
        OpenArgs {
            image: image.to_owned(),
            format: None,
            partition: None,
        }
    }

    #[test]
    fn create_put_ls_get_info() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("d.vmdk");
        create(&CreateArgs {
            image: img.clone(),
            size: 64 << 20,
            format: None,
            offset: 32256,
            label: "JOB".into(),
        })
        .unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("Nested Dir")).unwrap();
        fs::write(src.join("a.txt"), b"alpha").unwrap();
        fs::write(src.join("Nested Dir/B File.bin"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        put(&PutArgs {
            open: open_args(&img),
            src: vec![src.clone()],
            to: "in".into(),
        })
        .unwrap();

        let mut out = Vec::new();
        ls(
            &LsArgs {
                open: open_args(&img),
                path: "in/src".into(),
                long: false,
            },
            &mut out,
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "Nested Dir/\na.txt\n");
        let mut out = Vec::new();
        ls(
            &LsArgs {
                open: open_args(&img),
                path: "in/src/Nested Dir".into(),
                long: true,
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("      100000 ") && text.ends_with(" B File.bin\n"),
            "{text}"
        );

        let back = dir.path().join("back");
        get(&GetArgs {
            open: open_args(&img),
            path: "in/src".into(),
            dest: Some(back.clone()),
        })
        .unwrap();
        assert_eq!(fs::read(back.join("a.txt")).unwrap(), b"alpha");
        assert_eq!(
            fs::read(back.join("Nested Dir/B File.bin")).unwrap(),
            vec![7u8; 100_000]
        );
        assert!(!back.join("link").exists());

        let mut out = Vec::new();
        info(
            &InfoArgs {
                open: open_args(&img),
            },
            &mut out,
        )
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        for want in [
            "container:   vmdk (monolithicSparse)",
            "at byte 32256",
            "FAT16",
            "label:       JOB",
        ] {
            assert!(text.contains(want), "{want} missing in\n{text}");
        }
    }

    #[test]
    fn times_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00");
        assert_eq!(format_time(1_700_000_000), "2023-11-14 22:13");
    }
}
