#!/usr/bin/env python3
"""What the node policy's prepare-job hook adds to a job it does not pick.

Runs `vm-capsule-prepare-job` as the starter does (argv[0] its path, cwd a sandbox holding
`.machine.ad`, the job ad on stdin, the hook's environment) with a policy that is false for the
job, interleaved with a trivial hook (/bin/true, which also takes the ad on stdin), and prints
the median and 95th percentile of each and their difference: the cost of the policy for a job
that runs natively. The job ad is a real 24.0 job ad's size (about 130 attributes, 5 KiB).

Usage: scripts/bench/policy-hook.py [rounds] [vm-capsule binary]
(default 400 rounds, the release build target/x86_64-unknown-linux-gnu/release/vm-capsule).
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 400
exe = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
    ROOT, "target/x86_64-unknown-linux-gnu/release/vm-capsule")

work = tempfile.mkdtemp(prefix="policy-hook.")
hook = os.path.join(work, "vm-capsule-prepare-job")
os.symlink(exe, hook)
sandbox = os.path.join(work, "dir_1234")
os.mkdir(sandbox)
with open(os.path.join(sandbox, ".machine.ad"), "w") as f:
    f.write('Name = "slot1_1@node"\nMemory = 2048\nCpus = 1\n')
    f.write("".join('Attr%d = "machine value %d"\n' % (i, i) for i in range(150)))
    f.write('VMCapsuleJob = TARGET.Owner =!= "alice" && TARGET.RequestMemory < MY.Memory\n')
job = ['ClusterId = 42', 'ProcId = 0', 'Owner = "alice"', 'JobUniverse = 5',
       'Cmd = "/home/alice/job.sh"', 'Iwd = "%s"' % sandbox, 'RequestMemory = 100',
       'Arguments = "one two three"', 'TransferInput = "in.txt"']
job += ['JobAttr%d = "value of attribute %d, as long as a typical one"' % (i, i) for i in range(120)]
ad = ("\n".join(job) + "\n").encode()
env = {"HOME": "/root", "PATH": "/usr/bin:/bin", "CONDOR_CONFIG": "/dev/null",
       "_CONDOR_MACHINE_AD": os.path.join(sandbox, ".machine.ad"),
       "_CONDOR_JOB_AD": os.path.join(sandbox, ".job.ad")}


def run(argv):
    start = time.perf_counter()
    out = subprocess.run(argv, input=ad, cwd=sandbox, env=env, capture_output=True, check=True)
    took = time.perf_counter() - start
    return took, out.stdout


times = {"hook": [], "trivial": []}
for i in range(rounds):
    for name in (("hook", "trivial") if i % 2 == 0 else ("trivial", "hook")):
        took, stdout = run([hook] if name == "hook" else ["/bin/true"])
        if name == "hook" and stdout:
            sys.exit("the hook printed something for a job the policy does not pick: %r" % stdout)
        times[name].append(took)

def ms(v):
    return "%.2f ms" % (v * 1000)

for name, t in times.items():
    t.sort()
    print("%-8s median %s  p95 %s  (n=%d)" % (name, ms(statistics.median(t)), ms(t[int(len(t) * 0.95)]), len(t)))
diff = statistics.median(times["hook"]) - statistics.median(times["trivial"])
print("added per job (median hook - median trivial): %s; ratio %.2f" % (
    ms(diff), statistics.median(times["hook"]) / statistics.median(times["trivial"])))
subprocess.run(["rm", "-rf", work], check=True)
