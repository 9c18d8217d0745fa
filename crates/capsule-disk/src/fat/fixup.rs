//! What we correct behind `fatfs` 0.3.6 so that `fsck.fat`, mtools, Windows and Linux see the
//! volume as `mkfs.vfat` and `mcopy` would have written it. Each fix names its reason; drop it
//! when `fatfs` does the right thing itself.

use std::io;

use super::boot::HIDDEN_SECTORS_FIELD;
use super::{BootInfo, FatError, VolumeRw};

/// Record the sectors in front of the volume in the boot sector's "hidden sectors" field (and
/// in the FAT32 backup boot sector), as `mkfs.vfat --offset` does: `fatfs` writes 0, which
/// some operating systems (Windows) use to locate the volume.
pub(crate) fn hidden_sectors(
    boot: &BootInfo,
    v: &mut dyn VolumeRw,
    sectors: u32,
) -> io::Result<()> {
    let field = sectors.to_le_bytes();
    v.write_at(HIDDEN_SECTORS_FIELD, &field)?;
    if let Some(backup) = boot.backup_boot_offset() {
        v.write_at(backup + HIDDEN_SECTORS_FIELD, &field)?;
    }
    Ok(())
}

/// Put the volume label into the root directory too: `fatfs` writes it only in the boot
/// sector, while Windows and `mlabel -s` read the root-directory entry. The root is empty right
/// after formatting, so the entry takes its first slot.
pub(crate) fn label_entry(
    boot: &BootInfo,
    v: &mut dyn VolumeRw,
    label: &[u8; 11],
) -> io::Result<()> {
    let root = match boot.root_cluster {
        Some(c) => boot
            .cluster_offset(u64::from(c))
            .ok_or_else(|| io::Error::other(format!("root cluster {c} is outside the volume")))?,
        None => boot.root_offset,
    };
    let mut entry = [0u8; 32];
    entry[..11].copy_from_slice(label);
    entry[11] = 0x08; // ATTR_VOLUME_ID
    v.write_at(root, &entry)
}

/// `fatfs` writes long-name entries in front of a new directory's `.` and `..`, which
/// `fsck.fat` rejects, and points `..` at the root's cluster on FAT32 where the specification
/// wants 0. Rewrite the first four entries of directory `cluster` as plain `.` and `..`.
pub(crate) fn dot_entries(
    boot: &BootInfo,
    v: &mut dyn VolumeRw,
    cluster: u32,
    parent_is_root: bool,
) -> Result<(), FatError> {
    let at = boot
        .cluster_offset(u64::from(cluster))
        .ok_or_else(|| FatError::Corrupt {
            what: "FAT directory",
            offset: boot.fat_offset,
            detail: format!("new directory at cluster {cluster}, outside the volume"),
        })?;
    let mut head = [0u8; 4 * 32];
    v.read_at(at, &mut head)?;
    let (first, rest) = head.split_at(32);
    let (dot, rest) = rest.split_at(32);
    let (_, dotdot) = rest.split_at(32);
    if first[11] != 0x0f || !dot.starts_with(b".          ") || !dotdot.starts_with(b"..         ")
    {
        return Ok(());
    }
    let mut fixed = [0u8; 4 * 32];
    let (new_dot, rest) = fixed.split_at_mut(32);
    let (new_dotdot, _) = rest.split_at_mut(32);
    new_dot.copy_from_slice(dot);
    new_dotdot.copy_from_slice(dotdot);
    if parent_is_root {
        // first cluster high (20..22) and low (26..28) words of '..'
        new_dotdot[20..22].fill(0);
        new_dotdot[26..28].fill(0);
    }
    v.write_at(at, &fixed)?;
    Ok(())
}

/// FAT32: write the true free-cluster count and the next-free hint `hint` into the FSInfo
/// sector. Clusters allocated by [`super::ChainWriter`] bypass `fatfs`'s bookkeeping, so its
/// count would be stale. `hint` 2 means nothing was allocated that way: `fatfs` is right.
pub(crate) fn fs_info(boot: &BootInfo, v: &mut dyn VolumeRw, hint: u64) -> io::Result<()> {
    let Some(at) = boot.fs_info_offset else {
        return Ok(());
    };
    if hint == 2 {
        return Ok(());
    }
    let mut lead = [0u8; 4];
    v.read_at(at, &mut lead)?;
    let mut structure = [0u8; 4];
    v.read_at(at + 484, &mut structure)?;
    if lead != *b"RRaA" || structure != *b"rrAa" {
        return Ok(()); // no valid FSInfo sector: leave it alone
    }
    let free = boot.count_free(v)?;
    let next = if boot.is_valid_cluster(hint) {
        hint
    } else {
        0xffff_ffff
    };
    let mut fields = [0u8; 8];
    fields[..4].copy_from_slice(&u32::try_from(free).unwrap_or(u32::MAX).to_le_bytes());
    fields[4..].copy_from_slice(&u32::try_from(next).unwrap_or(u32::MAX).to_le_bytes());
    v.write_at(at + 488, &fields)
}
