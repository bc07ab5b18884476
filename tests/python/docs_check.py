#!/usr/bin/env python3
"""Checks the docs against the binary and against themselves.

Every flag that `rbd-addons serve --help` lists must appear in docs/ (an admin
looks a flag up there), every relative link in README.md and docs/*.md must
name a file that exists and, with a #fragment, a heading in it, and the
README stays short enough to read in five minutes (at most 400 lines).

Usage: docs_check.py <rbd-addons binary> <repository root>
Prints one line per failed check and closes with "N passed, N failed".
"""

import glob
import os
import re
import subprocess
import sys

RESULTS = {"passed": 0, "failed": 0}
README_MAX_LINES = 400


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    if not ok:
        print(f"FAIL {name}{': ' + str(detail) if detail else ''}")


def anchor(heading):
    """GitHub's anchor for a Markdown heading."""
    text = heading.lstrip("#").strip().lower()
    text = re.sub(r"[^a-z0-9 \-]", "", text)
    return text.replace(" ", "-")


def anchors(path):
    found, fenced = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"^#{1,6} ", line):
            found.add(anchor(line))
    return found


def links(path):
    """Relative Markdown links outside code blocks: (target, fragment)."""
    out, fenced = [], False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fenced = not fenced
            continue
        if fenced:
            continue
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if re.match(r"^[a-z]+:", target):
                continue
            file, _, fragment = target.partition("#")
            out.append((file, fragment))
    return out


def main():
    binary, root = sys.argv[1], sys.argv[2]
    docs = sorted(glob.glob(os.path.join(root, "docs", "*.md")))
    check("docs/ has pages", bool(docs))
    text = "".join(open(p, encoding="utf-8").read() for p in docs)
    out = subprocess.run([binary, "serve", "--help"], capture_output=True, text=True, timeout=30)
    flags = sorted(set(re.findall(r"--[a-z][a-z0-9-]*", out.stdout)) - {"--help"})
    check("serve --help lists flags", out.returncode == 0 and bool(flags), out.stderr)
    for flag in flags:
        check(f"{flag} (serve --help) is in docs/", f"`{flag}`" in text or f"{flag}=" in text or f"{flag} " in text)
    readme = os.path.join(root, "README.md")
    lines = sum(1 for _ in open(readme, encoding="utf-8"))
    check(f"README.md has at most {README_MAX_LINES} lines", lines <= README_MAX_LINES, lines)
    for page in [readme] + docs:
        name = os.path.relpath(page, root)
        for file, fragment in links(page):
            target = os.path.normpath(os.path.join(os.path.dirname(page), file)) if file else page
            exists = os.path.exists(target)
            check(f"{name}: link to {file or '#' + fragment} resolves", exists, target)
            if exists and fragment and target.endswith(".md"):
                check(f"{name}: {file}#{fragment} names a heading", fragment in anchors(target))
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 0 if RESULTS["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
