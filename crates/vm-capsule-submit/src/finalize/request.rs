//! Finalize's stdin, parsed once: the original job and what the routed ad says about the
//! capsule.

use std::path::PathBuf;

use capsule_disk::ImageFormat;
use capsule_manifest::RelPath;
use classad::eval::{integer_attr, string_attr};
use classad::stream::parse_hook_stream;

use super::error::FinalizeError;
use vm_capsule_core::job::JobSpec;
use vm_capsule_core::routed;
use vm_capsule_core::usage::JobUsage;

/// What finalize was asked to do.
#[derive(Debug, Clone)]
pub struct FinalizeRequest {
    /// The original job.
    pub job: JobSpec,
    /// The capsule, when the routed job is one of ours.
    pub capsule: Option<RoutedCapsule>,
    /// The job's own usage the vanilla flavour's launcher published on the routed job, and
    /// the attributes refused (the routed job's owner can edit them).
    pub usage: (JobUsage, Vec<String>),
}

/// The capsule as the routed ad describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedCapsule {
    /// The job dir (`VMCapsuleScratch`).
    pub scratch: PathBuf,
    /// The data disk's file name in it (`VMCapsuleDataDisk`).
    pub data_disk: RelPath,
    /// The vanilla flavour (HTCondor placed the outputs itself).
    pub vanilla: bool,
    /// The data disk's container format as staged, when the ad records it.
    pub format: Option<ImageFormat>,
    /// The data disk's virtual size as staged, when the ad records it.
    pub virtual_size: Option<u64>,
}

impl FinalizeRequest {
    /// Parse the original ad, an empty line, `------` and the routed ad.
    ///
    /// # Errors
    /// [`FinalizeError::Protocol`] for stdin the JobRouter does not send,
    /// [`FinalizeError::Job`] for an original ad that is not a job, [`FinalizeError::RoutedAd`]
    /// for a routed ad naming a data disk that is not a plain file name.
    pub fn parse(stdin: &str) -> Result<FinalizeRequest, FinalizeError> {
        let ads = parse_hook_stream(stdin).map_err(|e| {
            FinalizeError::Protocol(format!("cannot parse the ads from the JobRouter: {e}"))
        })?;
        let (Some(original), Some(routed), 2) = (ads.first(), ads.last(), ads.len()) else {
            return Err(FinalizeError::Protocol(format!(
                "finalize expected the original and the routed ad, got {} ad(s)",
                ads.len()
            )));
        };
        let job = JobSpec::from_ad(&original.ad)?;
        let routed = &routed.ad;
        let capsule = match (
            string_attr(routed, routed::ATTR_SCRATCH),
            string_attr(routed, routed::ATTR_DATA_DISK),
        ) {
            (Some(scratch), Some(disk)) => Some(RoutedCapsule {
                scratch: PathBuf::from(scratch),
                data_disk: RelPath::file_name_only(&disk).map_err(|e| {
                    FinalizeError::RoutedAd(format!(
                        "routed ad: {} = {disk:?}: {e}",
                        routed::ATTR_DATA_DISK
                    ))
                })?,
                vanilla: string_attr(routed, routed::ATTR_FLAVOUR).as_deref() == Some("vanilla"),
                format: string_attr(routed, routed::ATTR_DATA_DISK_FORMAT)
                    .and_then(|f| f.parse::<ImageFormat>().ok()),
                virtual_size: integer_attr(routed, routed::ATTR_DATA_DISK_BYTES)
                    .and_then(|b| u64::try_from(b).ok()),
            }),
            _ => None,
        };
        Ok(FinalizeRequest {
            job,
            capsule,
            usage: JobUsage::from_routed_ad(routed),
        })
    }
}
