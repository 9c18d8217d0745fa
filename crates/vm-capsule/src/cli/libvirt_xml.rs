//! `vm-capsule libvirt-xml`: HTCondor's `LIBVIRT_XML_SCRIPT` for vm-capsule jobs in the VM
//! universe (see [`vm_capsule_execute::libvirt`]): the vm-gahp's ad on stdin, domain XML on stdout.
//!
//! Exit codes: 0 with the XML, or with a refusal (a domain libvirt will not create, so the
//! vm-gahp holds the job; the reason on stderr for its log); 1 only for a VM job that is not
//! a vm-capsule job when `VM_CAPSULE_LIBVIRT_OTHER_JOBS = builtin`, which makes the vm-gahp
//! use its built-in XML. Nothing else exits 1, not even a bug: a non-zero exit would boot the
//! same images with the built-in XML.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use vm_capsule_core::environment::Environment;
use vm_capsule_core::settings::Settings;
use vm_capsule_execute::libvirt::{
    decide, refusal_document, refused_unread, DomainType, NodeConfig, OtherJobs, Outcome,
};

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

/// Print the domain XML (or the refusal) for the ad on stdin.
pub fn run_libvirt_xml(args: &LibvirtXmlArgs, env: &Environment) -> Result<ExitCode> {
    let outcome = std::panic::catch_unwind(|| outcome(args, env)).unwrap_or_else(|_| {
        refused_unread(
            "vm-capsule libvirt-xml failed inside (a bug, reported above); the job is not booted",
        )
    });
    let mut out = std::io::stdout().lock();
    match outcome {
        Outcome::Domain(xml) => {
            out.write_all(xml.as_bytes())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Builtin(line) => {
            eprintln!("vm-capsule libvirt-xml: {line}");
            Ok(ExitCode::FAILURE)
        }
        Outcome::Refused(line) => {
            eprintln!("vm-capsule libvirt-xml: {line}");
            out.write_all(refusal_document().as_bytes())?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Read the ad and this node's knobs, and decide.
fn outcome(args: &LibvirtXmlArgs, env: &Environment) -> Outcome {
    let mut text = String::new();
    if let Err(e) = std::io::stdin()
        .take(MAX_STDIN + 1)
        .read_to_string(&mut text)
    {
        return refused_unread(&format!("cannot read the job's attributes from stdin: {e}"));
    }
    if u64::try_from(text.len()).unwrap_or(u64::MAX) > MAX_STDIN {
        return refused_unread(&format!(
            "the attributes on stdin are larger than {MAX_STDIN} bytes"
        ));
    }
    let ad = match classad::parse_old_ad(&text) {
        Ok(ad) => ad,
        Err(e) => {
            return refused_unread(&format!(
                "cannot parse the job's attributes from the vm-gahp: {e}"
            ))
        }
    };
    match node_config(args, env) {
        Ok(node) => decide(&ad, &node),
        Err(why) => vm_capsule_execute::libvirt::refused(&ad, &why),
    }
}

/// This node's side: its own configuration (knobs, `_CONDOR_` overrides, `CONDOR_IDS`) and
/// the arguments.
fn node_config(args: &LibvirtXmlArgs, env: &Environment) -> Result<NodeConfig, String> {
    let settings = Settings::load(args.config.as_deref(), env)
        .and_then(|s| s.libvirt_xml())
        .map_err(|e| format!("cannot read this node's configuration: {e}"))?;
    let choice = args.domain_type.as_deref().unwrap_or(settings.domain_type);
    Ok(NodeConfig {
        domain: DomainType::parse(choice)?.resolve(),
        node_image_dir: settings.node_image_dir,
        other_jobs: OtherJobs::parse(settings.other_jobs)?,
        condor_uid: env.condor_uid(),
        host_paths: settings.host_paths,
    })
}
