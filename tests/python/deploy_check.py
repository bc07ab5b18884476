#!/usr/bin/env python3
"""Checks the manifests in deploy/ against the binary they deploy.

Every YAML document must parse. Every use of rbd-addons (a container named
rbd-addons: its args; any exec probe whose command is rbd-addons) must name a
subcommand that exists and only flags that subcommand's --help lists, so a
renamed or removed flag fails here instead of in a pod's CrashLoopBackOff.

With the Dockerfile given, the manifests are also held to the image it
builds: the container runs as the image's USER (or as root, only where the
CSI front must reach csi-rbdplugin's root-owned socket) with a read-only root
filesystem; its args go to the image's ENTRYPOINT (no `command:`), the exec
probes' program is the entrypoint on the image's PATH, the image's own CMD is
a valid invocation whose socket is the one the sidecar is given, and the
pod's fsGroup is the image's group (the sidecar reaches the 0660 socket).

Usage: deploy_check.py <rbd-addons binary> <deploy dir> [Dockerfile]
Prints one line per check and closes with "N passed, N failed".
"""

import json

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


def final_stage(dockerfile):
    """USER, ENTRYPOINT and CMD of the Dockerfile's last stage (JSON forms)."""
    stage = {}
    lines, joined = open(dockerfile).read().splitlines(), ""
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        joined += line.rstrip("\\") + " " if line.rstrip().endswith("\\") else line + "\n"
    for line in joined.splitlines():
        word, _, rest = line.strip().partition(" ")
        word = word.upper()
        if word == "FROM":
            stage = {}
        elif word == "USER":
            stage["user"] = rest.strip()
        elif word in ("ENTRYPOINT", "CMD"):
            stage[word.lower()] = json.loads(rest)
    return stage


def check_image(binary, image, docs_by_file):
    """The manifests against the image the Dockerfile builds."""
    uid, _, gid = image.get("user", "").partition(":")
    check("Dockerfile: runs as a numeric non-root USER", uid.isdigit() and uid != "0", image.get("user"))
    entry = image.get("entrypoint") or []
    check("Dockerfile: ENTRYPOINT is the binary on the PATH", len(entry) == 1 and
          os.path.dirname(entry[0]) in ("/usr/local/bin", "/usr/bin"), entry)
    cmd = image.get("cmd") or []
    check_invocation(binary, "Dockerfile CMD", cmd)
    image_socket = endpoint_of(cmd)
    for name, docs in docs_by_file.items():
        for doc in docs:
            pod = ((doc or {}).get("spec", {}) or {}).get("template", {}).get("spec", {}) or {}
            fs_group = (pod.get("securityContext") or {}).get("fsGroup")
            if fs_group is not None:
                check(f"{name}: the pod's fsGroup is the image's group", str(fs_group) == (gid or uid), fs_group)
            for c in containers(doc):
                if c.get("name") == "rbd-addons":
                    check(f"{name} rbd-addons: no command, args go to the ENTRYPOINT",
                          c.get("command") in (None, entry), c.get("command"))
                    sc = c.get("securityContext")
                    if sc is not None:
                        as_root = sc.get("runAsUser") == 0
                        if as_root:
                            check(f"{name} rbd-addons: root only for the CSI front's upstream socket",
                                  any(a.startswith("--csi-upstream") for a in c.get("args") or []) and
                                  sc.get("runAsNonRoot") is False, sc)
                        else:
                            check(f"{name} rbd-addons: runs as the image's user", str(sc.get("runAsUser")) == uid, sc)
                            check(f"{name} rbd-addons: runs as the image's group",
                                  str(sc.get("runAsGroup")) == (gid or uid), sc)
                            check(f"{name} rbd-addons: read-only root filesystem",
                                  sc.get("readOnlyRootFilesystem") is True, sc)
                            check(f"{name} rbd-addons: runAsNonRoot", sc.get("runAsNonRoot") is True, sc)
                    args = c.get("args") or []
                    if args and args[0] == "serve" and image_socket:
                        check(f"{name} rbd-addons: serves the socket the image's CMD names",
                              endpoint_of(args) == image_socket, endpoint_of(args))
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    command = (c.get(probe) or {}).get("exec", {}).get("command") or []
                    if command and os.path.basename(command[0]) == "rbd-addons":
                        check(f"{name} {c.get('name')} {probe}: runs the image's entrypoint",
                              os.path.basename(command[0]) == os.path.basename(entry[0] if entry else "") and
                              (command[0] == entry[0] or "/" not in command[0]), command[0])
                if c.get("name") == "csi-addons" and image_socket:
                    addr = [a.split("=", 1)[1] for a in c.get("args") or [] if a.startswith("--csi-addons-address=")]
                    check(f"{name} csi-addons sidecar: dials the socket rbd-addons serves",
                          addr == [image_socket], addr)


def endpoint_of(argv):
    for i, a in enumerate(argv):
        if a.startswith("--endpoint="):
            return a.split("=", 1)[1]
        if a == "--endpoint" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def main():
    binary, deploy = sys.argv[1], sys.argv[2]
    dockerfile = sys.argv[3] if len(sys.argv) > 3 else None
    docs_by_file = {}
    files = sorted(glob.glob(os.path.join(deploy, "*.yaml")))
    check("deploy/ has manifests", bool(files), deploy)
    uses = 0
    for path in files:
        name = os.path.basename(path)
        try:
            docs = list(yaml.safe_load_all(open(path)))
            docs_by_file[name] = docs
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
    if dockerfile:
        check_image(binary, final_stage(dockerfile), docs_by_file)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
