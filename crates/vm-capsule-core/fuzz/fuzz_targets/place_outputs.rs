//! Finalize's placement against a hostile `output.tar`: whatever the archive
//! holds, nothing lands outside the job's Iwd, nothing the job did not declare is placed, no
//! link is followed, no temporary file stays, and the user's own files are untouched.
//!
//! The first byte picks the rules (`transfer_output_files` with a remap, or HTCondor's
//! default rule); the second picks raw archive bytes or an archive built from a small
//! operation language whose names come from a table of hostile and ordinary ones.
#![no_main]

use std::fs;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vm_capsule_core::returned::place::{place_outputs, OutputRules};
use vm_capsule_core::job::JobSpec;

const NAMES: &[&[u8]] = &[
    b"out.txt",
    b"dir",
    b"dir/a",
    b"dir/sub/b",
    b"sub/c.txt",
    b"res",
    b"res/o.txt",
    b"job.sh",
    b"input.dat",
    b"link",
    b"link/x",
    b"dir/../../x",
    b"../x",
    b"/tmp/x",
    b".bashrc",
    b".ssh/authorized_keys",
    b"./dir/./a",
    b"dir//a",
    b"",
    b"\xff",
    b"a\0b",
    b".",
];

fn build(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 3 <= data.len() {
        let (op, pick, len) = (data[i], data[i + 1], usize::from(data[i + 2]));
        i += 3;
        let mut name = NAMES[usize::from(pick) % NAMES.len()].to_vec();
        if op & 0x40 != 0 {
            // A longer name: repeated components.
            let base = name.clone();
            for _ in 0..(len % 40) {
                name.push(b'/');
                name.extend_from_slice(&base);
            }
        }
        let kind = match op % 6 {
            0 | 1 => tar::EntryType::Regular,
            2 => tar::EntryType::Directory,
            3 => tar::EntryType::Symlink,
            4 => tar::EntryType::GNULongName,
            _ => tar::EntryType::Fifo,
        };
        let body: Vec<u8> = data
            .get(i..i + len.min(data.len() - i))
            .unwrap_or(&[])
            .to_vec();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(0o644);
        // Sometimes lie about the size (truncation, overlong claims).
        let size = if op & 0x80 != 0 {
            body.len() as u64 + u64::from(pick) * 7
        } else {
            body.len() as u64
        };
        h.set_size(size);
        let n = name.len().min(100);
        h.as_old_mut().name[..n].copy_from_slice(&name[..n]);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        if kind == tar::EntryType::GNULongName {
            out.extend_from_slice(&name);
        } else {
            out.extend_from_slice(&body);
        }
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out
}

fn tree(dir: &Path, rel: &str, out: &mut Vec<(String, bool)>) {
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let name = format!("{rel}{}", e.file_name().to_string_lossy());
        let meta = fs::symlink_metadata(e.path()).unwrap();
        out.push((name.clone(), meta.is_dir()));
        if meta.is_dir() {
            tree(&e.path(), &format!("{name}/"), out);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let named = data[0] & 1 == 0;
    let archive = if data[1] & 1 == 0 {
        build(&data[2..])
    } else {
        data[2..].to_vec()
    };
    let root = tempfile::tempdir().unwrap();
    let iwd = root.path().join("iwd");
    let outside = root.path().join("outside");
    fs::create_dir(&iwd).unwrap();
    fs::create_dir(&outside).unwrap();
    fs::write(iwd.join("job.sh"), "exe").unwrap();
    fs::write(iwd.join("input.dat"), "in").unwrap();
    std::os::unix::fs::symlink(&outside, iwd.join("link")).unwrap();
    let extra = if named {
        "TransferOutput = \"out.txt,dir,sub/c.txt\"\nTransferOutputRemaps = \"out.txt = res/o.txt\"\n"
    } else {
        ""
    };
    let ad = classad::parse_old_ad(&format!(
        "ClusterId = 1\nProcId = 0\nOwner = \"u\"\nIwd = \"{}\"\nCmd = \"job.sh\"\n{extra}",
        iwd.display()
    ))
    .unwrap();
    let rules = OutputRules::for_job(&JobSpec::from_ad(&ad).unwrap()).unwrap();
    let _ = place_outputs(
        archive.as_slice(),
        &rules,
        "1.0",
        &vm_capsule_core::temp_record::TempRecord::new(),
    );

    assert_eq!(
        fs::read_dir(&outside).unwrap().count(),
        0,
        "something landed outside"
    );
    assert_eq!(
        fs::read(iwd.join("job.sh")).unwrap(),
        b"exe",
        "the executable was replaced"
    );
    if named {
        // Not named, so never replaced; the default rule may replace the link (not follow it).
        assert!(fs::symlink_metadata(iwd.join("link"))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    let mut entries = Vec::new();
    tree(&iwd, "", &mut entries);
    for (name, is_dir) in &entries {
        assert!(
            !name.contains(".vm-capsule."),
            "temporary file left: {name}"
        );
        let top = name.split('/').next().unwrap();
        if named {
            let allowed = ["job.sh", "input.dat", "link", "res", "dir", "c.txt"];
            assert!(allowed.contains(&top), "undeclared output placed: {name}");
            // out.txt may be a directory in the sandbox: then its tree goes to res/o.txt/.
            if top == "res" && name != "res" {
                assert!(
                    name == "res/o.txt" || name.starts_with("res/o.txt/"),
                    "only the remap target under res: {name}"
                );
            }
            if top == "input.dat" {
                assert_eq!(fs::read(iwd.join("input.dat")).unwrap(), b"in");
            }
        } else {
            assert!(
                !name.contains('/'),
                "nested output placed by the default rule: {name}"
            );
            assert!(!is_dir, "directory placed by the default rule: {name}");
        }
    }
});
