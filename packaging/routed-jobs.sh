# vm_capsule_check_routed_jobs ACTION: whether the package may be removed or upgraded now
# (ACTION: remove or upgrade). While jobs routed through vm-capsule's hooks are in the queue,
# the JobRouter still has to run their finalize and cleanup hooks: with the hooks gone it
# completes each original with the routed job's exit code and places none of its outputs,
# and a new version's hooks may not read what the old one staged. So this refuses (returns
# 1) while `condor_q` lists such jobs, and says how to drain them. When it cannot tell (no
# condor_q, no schedd on this machine, the schedd down or slow) it warns and returns 0: a
# package must stay removable. VM_CAPSULE_IGNORE_ROUTED_JOBS=1 goes ahead regardless.
# Shared by the .deb's preinst and prerm and the .rpm's %pre and %preun (written into each
# by packaging/maintainer-scripts.sh).
vm_capsule_check_routed_jobs() {
    vcr_action=$1
    vcr_the="the $vcr_action"
    [ "$vcr_action" = remove ] && vcr_the="the removal"
    vcr_drain="drain them first (ADMIN.md, \"Upgrading and removing\": JOB_ROUTER_MAX_JOBS = 0 and condor_reconfig on the submit node, then wait until condor_q -allusers -constraint 'VMCapsuleOriginalJob =!= undefined' lists nothing)"
    if [ "${VM_CAPSULE_IGNORE_ROUTED_JOBS:-}" = 1 ]; then
        echo "vm-capsule: VM_CAPSULE_IGNORE_ROUTED_JOBS=1: going ahead with $vcr_the without looking for routed jobs" >&2
        return 0
    fi
    vcr_q=$(command -v condor_q 2>/dev/null || true)
    if [ -z "$vcr_q" ]; then
        echo "vm-capsule: warning: condor_q not found on PATH ($PATH): cannot tell whether jobs routed through vm-capsule are in the queue; if this machine's JobRouter runs them, their outputs are lost by $vcr_the: $vcr_drain" >&2
        return 0
    fi
    # Bounded: a schedd that does not answer must not hold the package manager forever.
    vcr_timeout=
    if command -v timeout >/dev/null 2>&1; then
        vcr_timeout="timeout 60"
    fi
    vcr_err=$(mktemp 2>/dev/null || echo /tmp/vm-capsule-condor_q.$$)
    if vcr_jobs=$($vcr_timeout "$vcr_q" -allusers \
        -constraint 'VMCapsuleOriginalJob =!= undefined' \
        -af ClusterId ProcId VMCapsuleOriginalJob Owner 2>"$vcr_err"); then
        rm -f "$vcr_err"
    else
        vcr_rc=$?
        vcr_why=$(head -n 1 "$vcr_err" 2>/dev/null)
        rm -f "$vcr_err"
        echo "vm-capsule: warning: $vcr_q failed (exit $vcr_rc${vcr_why:+: $vcr_why}): no schedd here, or it is down or did not answer within 60 s; cannot tell whether jobs routed through vm-capsule are in the queue, going ahead with $vcr_the. If this machine's JobRouter runs them, $vcr_drain" >&2
        return 0
    fi
    if [ -z "$vcr_jobs" ]; then
        return 0
    fi
    vcr_count=$(printf '%s\n' "$vcr_jobs" | wc -l | tr -d ' ')
    {
        echo "vm-capsule: refusing to $vcr_action: $vcr_count job(s) routed through vm-capsule are in the queue (routed job, original job, owner):"
        printf '%s\n' "$vcr_jobs" | head -n 20 | while read -r vcr_c vcr_p vcr_o vcr_u; do
            echo "  $vcr_c.$vcr_p  $vcr_o  $vcr_u"
        done
        echo "The JobRouter still has to run their finalize hook, which places their outputs and exit"
        echo "status on the original job; without it their outputs are lost: $vcr_drain."
        echo "To go ahead anyway, losing their outputs: VM_CAPSULE_IGNORE_ROUTED_JOBS=1 and the same command."
    } >&2
    return 1
}
