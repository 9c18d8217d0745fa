#!/usr/bin/env python3
"""STAND-IN for HTCondor's condor_config_val (no HTCondor install can run here).

It answers the calls vm-capsule makes the way the real tool does, from HTCondor's own
configuration reader (the htcondor 24.0 wheel) reading the configuration CONDOR_CONFIG names:

  condor_config_val NAME                  the value; exit 1 "Not defined: NAME" when undefined
  condor_config_val -subsystem S NAME     S.NAME when defined, else NAME
  condor_config_val -dump PREFIX          "# ..." lines, then "NAME = value" per matching name
  condor_config_val -version              a version line

The tests copy it into a fake "tarball install" (<prefix>/bin) outside PATH.
"""
import sys

import htcondor


def value(name):
    v = htcondor.param.get(name)
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def main(argv):
    if argv[:1] == ["-version"]:
        print("$CondorVersion: 24.0.0 (stand-in) $")
        return 0
    if argv[:1] == ["-dump"]:
        prefix = argv[1].upper() if len(argv) > 1 else ""
        print("# Configuration from the stand-in condor_config_val")
        for name in sorted(htcondor.param.keys()):
            if name.upper().startswith(prefix):
                print("%s = %s" % (name, value(name)))
        return 0
    subsys = None
    if argv[:1] == ["-subsystem"]:
        subsys, argv = argv[1], argv[2:]
    status = 0
    for name in argv:
        v = value("%s.%s" % (subsys, name)) if subsys else None
        if v is None:
            v = value(name)
        if v is None:
            print("Not defined: %s" % name, file=sys.stderr)
            status = 1
        else:
            print(v)
    return status


sys.exit(main(sys.argv[1:]))
