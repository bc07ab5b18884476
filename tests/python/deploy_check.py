#!/usr/bin/env python3
"""Checks the manifests in deploy/ against the binary they deploy.

Every YAML document must parse. Every use of rbd-addons (a container named
rbd-addons: its args; any exec probe whose command is rbd-addons) must name a
subcommand that exists and only flags that subcommand's --help lists, so a
renamed or removed flag fails here instead of in a pod's CrashLoopBackOff.

Usage: deploy_check.py <rbd-addons binary> <deploy dir>
Prints one line per check and closes with "N passed, N failed".
"""

import glob
import os
import re
import subprocess
import sys

import yaml

RESULTS = {"passed": 0, "failed": 0}
HELP = {}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print(f"{'PASS' if ok else 'FAIL'} {name}{': ' + str(detail) if detail and not ok else ''}")


def flags_of(binary, subcommand):
    if subcommand not in HELP:
        out = subprocess.run([binary, subcommand, "--help"], capture_output=True, text=True, timeout=30)
        HELP[subcommand] = set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout)) if out.returncode == 0 else None
    return HELP[subcommand]


def check_invocation(binary, where, argv):
    if not argv:
        check(f"{where}: has arguments", False, argv)
        return
    subcommand, rest = argv[0], argv[1:]
    known = flags_of(binary, subcommand)
    check(f"{where}: subcommand {subcommand!r} exists", known is not None, subcommand)
    if known is None:
        return
    for arg in rest:
        if not arg.startswith("--"):
            continue
        flag = arg.split("=", 1)[0]
        check(f"{where}: {flag} is a flag of `rbd-addons {subcommand}`", flag in known, sorted(known))


def containers(doc):
    spec = (doc or {}).get("spec", {})
    pod = spec.get("template", {}).get("spec", spec)
    return pod.get("containers", []) or []


def main():
    binary, deploy = sys.argv[1], sys.argv[2]
    files = sorted(glob.glob(os.path.join(deploy, "*.yaml")))
    check("deploy/ has manifests", bool(files), deploy)
    uses = 0
    for path in files:
        name = os.path.basename(path)
        try:
            docs = list(yaml.safe_load_all(open(path)))
            check(f"{name} parses", True)
        except yaml.YAMLError as e:
            check(f"{name} parses", False, e)
            continue
        for doc in docs:
            for c in containers(doc):
                if c.get("name") == "rbd-addons":
                    uses += 1
                    check_invocation(binary, f"{name} container rbd-addons args", c.get("args") or [])
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    command = (c.get(probe) or {}).get("exec", {}).get("command") or []
                    if command and os.path.basename(command[0]) == "rbd-addons":
                        uses += 1
                        check_invocation(binary, f"{name} {c.get('name')} {probe}", command[1:])
    check("deploy/ runs rbd-addons somewhere", uses > 0, uses)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
