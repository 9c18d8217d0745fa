//! `vm-capsule libvirt-xml`: HTCondor's `LIBVIRT_XML_SCRIPT` for vm-capsule jobs in the VM
//! universe (see [`vm_capsule::libvirt`]): the vm-gahp's ad on stdin, domain XML on stdout.
//!
//! Exit codes: 0 with the XML; 1 when the job is not a vm-capsule job or its ad is unusable,
//! which makes the vm-gahp use its built-in XML (and log our stderr line).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;

use vm_capsule::config::Knobs;
use vm_capsule::libvirt::{domain_xml, DomainType, LibvirtError, DOMAIN_TYPE_KNOB};

/// Largest ad accepted on stdin (a job ad is a few KiB).
const MAX_STDIN: u64 = 1 << 20;

/// Arguments of `libvirt-xml` (HTCondor passes `LIBVIRT_XML_SCRIPT_ARGS`).
#[derive(Debug, Args)]
pub struct LibvirtXmlArgs {
    /// `kvm`, `qemu` (TCG) or `auto` [default: the VM_CAPSULE_LIBVIRT_DOMAIN_TYPE knob, else
    /// auto: kvm where this node has usable KVM].
    #[arg(long, value_name = "TYPE")]
    domain_type: Option<String>,
    /// Read knobs from this file (HTCondor syntax) instead of `condor_config_val`.
    #[arg(long, env = "VM_CAPSULE_CONFIG")]
    config: Option<PathBuf>,
}

/// Print the domain XML for the ad on stdin.
pub fn run_libvirt_xml(args: &LibvirtXmlArgs) -> Result<ExitCode> {
    let mut text = String::new();
    std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_string(&mut text)
        .context("cannot read the job's attributes from stdin")?;
    anyhow::ensure!(
        u64::try_from(text.len()).unwrap_or(u64::MAX) <= MAX_STDIN,
        "the attributes on stdin are larger than {MAX_STDIN} bytes"
    );
    let ad = classad::parse_old_ad(&text)
        .context("cannot parse the job's attributes from the vm-gahp")?;
    let choice = match &args.domain_type {
        Some(t) => t.clone(),
        None => Knobs::load(args.config.as_deref(), std::env::vars())
            .context("cannot read the configuration")?
            .get(DOMAIN_TYPE_KNOB)
            .unwrap_or("auto")
            .to_owned(),
    };
    let domain = DomainType::parse(&choice)
        .map_err(anyhow::Error::msg)?
        .resolve();
    match domain_xml(&ad, domain) {
        Ok(xml) => {
            let mut out = std::io::stdout().lock();
            out.write_all(xml.as_bytes())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ LibvirtError::NotOurs) => {
            eprintln!("vm-capsule libvirt-xml: {e}");
            Ok(ExitCode::FAILURE)
        }
        Err(e) => Err(e).context("cannot write the domain XML of this vm-capsule job"),
    }
}
