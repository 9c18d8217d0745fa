//! The files an image names (qcow2 backing files, VMDK parents and extents, qcow2 external
//! data files) go through the caller's `Resolver`, which sees each one before it is opened and
//! may refuse the image; the default follows them beside the image as QEMU does.

use std::fs::File;
use std::path::{Path, PathBuf};

use capsule_disk::{Access, Error, FollowReferences, Image, ImageFormat, Reference, Resolver};

use crate::tools::qemu_img;

/// Records what it is asked for, then follows (or refuses everything).
#[derive(Default)]
struct Recorder {
    asked: Vec<(Reference, String)>,
    refuse: bool,
}

impl Resolver for Recorder {
    fn open(
        &mut self,
        image: &Path,
        kind: Reference,
        name: &str,
        access: Access,
    ) -> Result<(PathBuf, File), Error> {
        self.asked.push((kind, name.to_owned()));
        if self.refuse {
            return Err(Error::Reference {
                path: image.to_owned(),
                kind,
                name: name.into(),
                why: "refused by the test".into(),
            });
        }
        FollowReferences.open(image, kind, name, access)
    }
}

fn open(path: &Path, resolver: &mut Recorder) -> Result<Image, Error> {
    let file = File::open(path).unwrap();
    Image::open_file(path, file, Access::ReadOnly, None, resolver)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_named_file_goes_through_the_resolver() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A qcow2 over a qcow2 over a raw file.
    Image::create(&d.join("base.raw"), ImageFormat::Raw, 1 << 20)
        .unwrap()
        .finish()
        .unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "raw",
        "-b",
        "base.raw",
        s(&d.join("mid.qcow2")),
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-F",
        "qcow2",
        "-b",
        "mid.qcow2",
        s(&d.join("top.qcow2")),
    ]);
    refused_at_the_first_name(d);
    // A split VMDK and a VMDK delta over it.
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-o",
        "subformat=twoGbMaxExtentFlat",
        s(&d.join("split.vmdk")),
        "3G",
    ]);
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "vmdk",
        "-F",
        "vmdk",
        "-b",
        "split.vmdk",
        s(&d.join("delta.vmdk")),
    ]);

    let mut r = Recorder::default();
    let img = open(&d.join("top.qcow2"), &mut r).unwrap();
    assert_eq!(
        r.asked,
        [
            (Reference::BackingFile, "mid.qcow2".to_owned()),
            (Reference::BackingFile, "base.raw".to_owned())
        ]
    );
    assert_eq!(img.every_file().len(), 3);

    let mut r = Recorder::default();
    open(&d.join("delta.vmdk"), &mut r).unwrap();
    // The delta is one sparse file: only its parent and the parent's extents are named.
    assert!(
        r.asked
            .contains(&(Reference::Parent, "split.vmdk".to_owned())),
        "{:?}",
        r.asked
    );
    assert_eq!(
        r.asked
            .iter()
            .filter(|(k, n)| *k == Reference::Extent && n.starts_with("split-f"))
            .count(),
        2,
        "{:?}",
        r.asked
    );
}

/// A refusal refuses the image, and nothing below it is opened.
fn refused_at_the_first_name(d: &Path) {
    let mut r = Recorder {
        refuse: true,
        ..Recorder::default()
    };
    let err = open(&d.join("top.qcow2"), &mut r).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Reference {
                kind: Reference::BackingFile,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(r.asked.len(), 1);
    assert!(
        err.to_string()
            .contains("names the backing file 'mid.qcow2'"),
        "{err}"
    );
    // A standalone image names nothing.
    let mut r = Recorder {
        refuse: true,
        ..Recorder::default()
    };
    open(&d.join("base.raw"), &mut r).unwrap();
    assert!(r.asked.is_empty());
}

#[test]
fn an_external_data_file_is_named_and_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        "data_file=x.data,data_file_raw=on",
        s(&img),
        "1M",
    ]);
    for err in [
        Image::open(&img, Access::ReadOnly).unwrap_err(),
        open(&img, &mut Recorder::default()).unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::Reference { kind: Reference::ExternalDataFile, name, .. } if &**name == "x.data"),
            "{err}"
        );
        assert!(
            err.to_string().contains("external data file 'x.data'"),
            "{err}"
        );
    }
}

/// A sparse VMDK whose header says capacity 0 is read by QEMU as a descriptor: the extents
/// its embedded descriptor names are files to open, not the file itself.
#[test]
fn a_zero_capacity_sparse_vmdk_names_its_extents() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("s.vmdk");
    Image::create(&img, ImageFormat::Vmdk, 1 << 20)
        .unwrap()
        .finish()
        .unwrap();
    let mut bytes = std::fs::read(&img).unwrap();
    bytes[12..20].fill(0);
    std::fs::write(&img, &bytes).unwrap();
    let mut r = Recorder {
        refuse: true,
        ..Recorder::default()
    };
    let err = open(&img, &mut r).unwrap_err();
    assert_eq!(r.asked, [(Reference::Extent, "s.vmdk".to_owned())], "{err}");
}

/// A file the caller opened (and read, or shares with another descriptor) is parsed from its
/// first byte, wherever its offset is.
#[test]
fn an_open_file_is_read_from_its_start() {
    use std::io::{Seek, SeekFrom};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("x.qcow2");
    Image::create(&img, ImageFormat::Qcow2, 1 << 20)
        .unwrap()
        .finish()
        .unwrap();
    let mut file = File::open(&img).unwrap();
    file.seek(SeekFrom::End(0)).unwrap();
    let image =
        Image::open_file(&img, file, Access::ReadOnly, None, &mut FollowReferences).unwrap();
    assert_eq!(image.format(), ImageFormat::Qcow2);
    assert_eq!(image.virtual_size(), 1 << 20);
}
