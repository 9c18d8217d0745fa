//! Direct kernel boot: the kernel, initrd, root device and parameters a template boots
//! instead of a disk's own boot loader, and how the routed ad names them.
//!
//! A classad template (`condor_submit -dump` of the admin's VM submit file) says it as
//! HTCondor does: `xen_kernel`, `xen_initrd`, `xen_root`, `xen_kernel_params` become
//! `VMPARAM_Xen_Kernel`, `VMPARAM_Xen_Initrd`, `VMPARAM_Xen_Root`, `VMPARAM_Xen_Kernel_Params`,
//! and `xen_kernel = included` means the disk boots itself. Without a classad template the
//! fixed names `vmlinuz` + `initrd.img` (+ a `cmdline` file) are the default.
//!
//! The routed ad always carries our own `VMCapsuleKernel`, `VMCapsuleInitrd` and
//! `VMCapsuleKernelArgs` (what `vm-capsule run` and a `LIBVIRT_XML_SCRIPT` read); a Xen routed
//! ad also carries the `VMPARAM_Xen_*` attributes a real Xen execute node reads, naming
//! exactly the files that travel.

use classad::eval::string_attr;
use classad::{ClassAd, Expr};

/// `VMPARAM_Xen_Kernel`: the kernel file, `included` (boot from the disk) or `any`.
pub const XEN_KERNEL: &str = "VMPARAM_Xen_Kernel";
/// `VMPARAM_Xen_Initrd`: the initrd file.
pub const XEN_INITRD: &str = "VMPARAM_Xen_Initrd";
/// `VMPARAM_Xen_Root`: the root device, passed as `root=` on the kernel command line.
pub const XEN_ROOT: &str = "VMPARAM_Xen_Root";
/// `VMPARAM_Xen_Kernel_Params`: further kernel parameters.
pub const XEN_KERNEL_PARAMS: &str = "VMPARAM_Xen_Kernel_Params";
/// The routed ad's kernel file name (ours).
pub const CAPSULE_KERNEL: &str = "VMCapsuleKernel";
/// The routed ad's initrd file name (ours).
pub const CAPSULE_INITRD: &str = "VMCapsuleInitrd";
/// The routed ad's whole kernel command line (ours).
pub const CAPSULE_KERNEL_ARGS: &str = "VMCapsuleKernelArgs";
/// `xen_kernel` value meaning "the disk boots itself".
pub const INCLUDED: &str = "included";

/// A kernel booted directly, with files of type `F` (paths in a template, names in a sandbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectBoot<F> {
    /// The kernel image.
    pub kernel: F,
    /// The initial ramdisk, if any.
    pub initrd: Option<F>,
    /// Root device (`root=` on the command line), if any.
    pub root: Option<String>,
    /// Further kernel parameters.
    pub params: String,
}

impl<F> DirectBoot<F> {
    /// The kernel command line: `root=<root>` first, then the parameters.
    pub fn cmdline(&self) -> String {
        match &self.root {
            Some(root) if !root.trim().is_empty() => {
                format!("root={} {}", root.trim(), self.params.trim())
                    .trim()
                    .to_owned()
            }
            _ => self.params.trim().to_owned(),
        }
    }

    /// The same boot with its files mapped (template paths to sandbox names, say).
    pub fn map<G>(&self, mut f: impl FnMut(&F) -> G) -> DirectBoot<G> {
        DirectBoot {
            kernel: f(&self.kernel),
            initrd: self.initrd.as_ref().map(&mut f),
            root: self.root.clone(),
            params: self.params.clone(),
        }
    }
}

impl DirectBoot<String> {
    /// Name this boot in a routed ad; `xen` adds the `VMPARAM_Xen_*` attributes.
    pub fn write_to(&self, ad: &mut ClassAd, xen: bool) {
        ad.insert(CAPSULE_KERNEL, Expr::string(self.kernel.clone()));
        if let Some(initrd) = &self.initrd {
            ad.insert(CAPSULE_INITRD, Expr::string(initrd.clone()));
        }
        ad.insert(CAPSULE_KERNEL_ARGS, Expr::string(self.cmdline()));
        if xen {
            ad.insert(XEN_KERNEL, Expr::string(self.kernel.clone()));
            if let Some(initrd) = &self.initrd {
                ad.insert(XEN_INITRD, Expr::string(initrd.clone()));
            }
            if let Some(root) = &self.root {
                ad.insert(XEN_ROOT, Expr::string(root.clone()));
            }
            if !self.params.is_empty() {
                ad.insert(XEN_KERNEL_PARAMS, Expr::string(self.params.clone()));
            }
        }
    }

    /// The direct boot a routed ad names: ours (`VMCapsuleKernel`...) first, else the
    /// `VMPARAM_Xen_*` attributes; `None` when the disk boots itself.
    pub fn from_routed_ad(ad: &ClassAd) -> Option<DirectBoot<String>> {
        if let Some(kernel) = string_attr(ad, CAPSULE_KERNEL) {
            return Some(DirectBoot {
                kernel,
                initrd: string_attr(ad, CAPSULE_INITRD),
                root: None,
                params: string_attr(ad, CAPSULE_KERNEL_ARGS).unwrap_or_default(),
            });
        }
        let kernel = string_attr(ad, XEN_KERNEL)?;
        if is_keyword(&kernel) {
            return None;
        }
        Some(DirectBoot {
            kernel,
            initrd: string_attr(ad, XEN_INITRD),
            root: string_attr(ad, XEN_ROOT),
            params: string_attr(ad, XEN_KERNEL_PARAMS).unwrap_or_default(),
        })
    }
}

/// `included` or `any`: HTCondor's `xen_kernel` values that name no file.
pub fn is_keyword(kernel: &str) -> bool {
    kernel.eq_ignore_ascii_case(INCLUDED) || kernel.eq_ignore_ascii_case("any")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn boot(root: Option<&str>, params: &str) -> DirectBoot<String> {
        DirectBoot {
            kernel: "vmlinuz".into(),
            initrd: Some("initrd.gz".into()),
            root: root.map(str::to_owned),
            params: params.into(),
        }
    }

    #[test]
    fn cmdline_puts_root_first() {
        assert_eq!(
            boot(Some("/dev/ram0"), "console=ttyS0 quiet").cmdline(),
            "root=/dev/ram0 console=ttyS0 quiet"
        );
        assert_eq!(boot(None, " quiet ").cmdline(), "quiet");
        assert_eq!(boot(Some("/dev/vda1"), "").cmdline(), "root=/dev/vda1");
    }

    #[test]
    fn routed_ad_round_trip_for_xen_and_kvm() {
        let b = boot(Some("/dev/ram0"), "console=ttyS0 quiet");
        let mut xen = ClassAd::new();
        b.write_to(&mut xen, true);
        assert_eq!(string_attr(&xen, XEN_INITRD).as_deref(), Some("initrd.gz"));
        assert_eq!(string_attr(&xen, XEN_ROOT).as_deref(), Some("/dev/ram0"));
        let back = DirectBoot::from_routed_ad(&xen).unwrap();
        assert_eq!(back.cmdline(), b.cmdline());
        assert_eq!(back.initrd, b.initrd);
        let mut kvm = ClassAd::new();
        b.write_to(&mut kvm, false);
        assert!(!kvm.contains(XEN_KERNEL));
        assert_eq!(
            DirectBoot::from_routed_ad(&kvm).unwrap().cmdline(),
            b.cmdline()
        );
    }

    #[test]
    fn xen_attributes_alone_are_read_and_included_means_disk() {
        let mut ad = ClassAd::new();
        ad.insert(XEN_KERNEL, Expr::string("k"));
        ad.insert(XEN_ROOT, Expr::string("/dev/xvda1"));
        let b = DirectBoot::from_routed_ad(&ad).unwrap();
        assert_eq!((b.kernel.as_str(), b.initrd.as_deref()), ("k", None));
        assert_eq!(b.cmdline(), "root=/dev/xvda1");
        ad.insert(XEN_KERNEL, Expr::string("Included"));
        assert_eq!(DirectBoot::from_routed_ad(&ad), None);
    }
}
