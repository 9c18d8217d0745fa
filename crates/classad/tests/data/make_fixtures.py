#!/usr/bin/env python3
"""Regenerate tests/data/ads/*.ad from tests/data/submit/*.sub with HTCondor itself.

Each submit description is turned into a real job ad by the htcondor 24.0 bindings
(`htcondor.Submit(text).jobs(count=1, clusterid=N)`), and written with `printOld()`.
Run: python3 make_fixtures.py   (needs `pip install 'htcondor==24.0.*'`)
"""
import os
import pathlib

os.environ.setdefault("CONDOR_CONFIG", "/dev/null")
import htcondor  # noqa: E402

here = pathlib.Path(__file__).resolve().parent
out_dir = here / "ads"
out_dir.mkdir(exist_ok=True)
for n, sub in enumerate(sorted((here / "submit").glob("*.sub")), start=1):
    text = sub.read_text()
    ads = list(htcondor.Submit(text).jobs(count=1, clusterid=100 + n))
    assert len(ads) == 1, sub
    ad = ads[0]
    # QDate and similar change on every run; pin them so the fixtures are reproducible.
    for volatile in ("QDate", "EnteredCurrentStatus", "JobCurrentStartDate"):
        if volatile in ad:
            ad[volatile] = 1700000000
    (out_dir / (sub.stem + ".ad")).write_text(ad.printOld())
    print("wrote", sub.stem + ".ad", len(ad), "attributes")
