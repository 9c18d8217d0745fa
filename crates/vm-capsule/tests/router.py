#!/usr/bin/env python3
"""HTCondor's own library playing the parts of condor_submit and the JobRouter's parser.

  router.py ads    stdin: JSON [{"name", "submit", "cluster", "owner"}]  ->  {"name": ad text}
  router.py check  stdin: JSON ["line", ...]  ->  ["error", ...] (empty when all lines parse)

`ads` turns submit descriptions into real job ads with htcondor.Submit(text).jobs() (24.0
wheel) and sets Owner as the schedd would. `check` parses each line on its own with HTCondor's
old-syntax parser, as JobRouterHookMgr does with hook stdout.
"""
import json
import os
import sys

os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import htcondor  # noqa: E402
import classad  # noqa: E402


def ads(jobs):
    out = {}
    for job in jobs:
        sub = htcondor.Submit(job["submit"])
        [ad] = list(sub.jobs(count=1, clusterid=job["cluster"]))
        ad["Owner"] = job["owner"]
        ad["User"] = job["owner"] + "@localhost"
        out[job["name"]] = ad.printOld()
    return out


def check(lines):
    errors = []
    for line in lines:
        try:
            ad = classad.parseOne(line, classad.Parser.Old)
            if len(ad) != 1:
                errors.append("not exactly one attribute: %r" % line)
        except Exception as e:  # noqa: BLE001
            errors.append("%r: %s" % (line, e))
    return errors


def main():
    data = json.load(sys.stdin)
    result = ads(data) if sys.argv[1] == "ads" else check(data)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
