"""Controller set-up with the standard library only.

deploy.py calls ensure() before it imports anything else, so the two
Quickstart commands work on a fresh Debian 12 machine: Debian packages from
pyproject's [tool.mailops] list, then a virtual environment with the pinned
Python packages, then a re-exec of the same command inside it.
A stamp (hash of pyproject.toml) makes the second call a no-op.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
STAMP = VENV / ".mailops-stamp"


def _say(msg: str) -> None:
    print(f"[setup] {msg}", file=sys.stderr, flush=True)


def _wanted() -> tuple[list[str], str]:
    raw = (ROOT / "pyproject.toml").read_bytes()
    apt = tomllib.loads(raw.decode())["tool"]["mailops"]["apt-packages"]
    return apt, hashlib.sha256(raw).hexdigest()


def _missing_debs(pkgs: list[str]) -> list[str]:
    missing = []
    for pkg in pkgs:
        res = subprocess.run(
            ["dpkg-query", "-W", "-f=${db:Status-Status}", pkg],
            capture_output=True, text=True,
        )
        if res.stdout.strip() != "installed":
            missing.append(pkg)
    return missing


def install_debs(pkgs: list[str]) -> None:
    missing = _missing_debs(pkgs)
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"mailops needs these Debian packages: {' '.join(missing)}; run as root.")
    _say(f"installing Debian packages: {' '.join(missing)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Without systemd as PID 1, package scripts would start daemons (named,
    # apt-cacher-ng) on the controller; the lab starts what it needs itself.
    policy = Path("/usr/sbin/policy-rc.d")
    had_policy = policy.exists()
    if not had_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
            check=True, env=env, stdout=subprocess.DEVNULL,
        )
    finally:
        if not had_policy:
            policy.unlink()


def ensure() -> None:
    """Make the controller ready, then run inside the venv."""
    apt, digest = _wanted()
    in_venv = Path(sys.prefix).resolve() == VENV.resolve()
    if STAMP.exists() and STAMP.read_text() == digest:
        if not in_venv:
            _reexec()
        return
    install_debs(apt)
    if not (VENV / "bin" / "python").exists():
        _say(f"creating virtual environment {VENV}")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    _say("installing pinned Python packages (pyproject.toml)")
    pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q",
           "--disable-pip-version-check"]
    subprocess.run([*pip, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)
    if not in_venv:
        _reexec()


def _reexec() -> None:
    python = str(VENV / "bin" / "python")
    os.execv(python, [python, *sys.argv])


def venv_bin(name: str) -> str:
    path = VENV / "bin" / name
    return str(path) if path.exists() else (shutil.which(name) or name)
