"""The project's own code passes its linters: ruff for Python, ansible-lint
for roles, playbooks and Molecule scenarios."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    targets = [p for p in ("mailops", "plugins", "tests", "bench", "deploy.py")
               if (ROOT / p).exists()]
    res = subprocess.run([str(BIN / "ruff"), "check", *targets],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ansible_lint_is_clean():
    targets = [p for p in ("roles", "mailops/lab/roles", "mailops/converge/playbooks", "molecule")
               if (ROOT / p).exists()]
    # Without the ANSIBLE_* settings mailops gives its own runs (other tests
    # import them into this process): ansible-lint's syntax check needs
    # Ansible's implicit localhost inventory. It does need the collection
    # (mailops.mail: roles, modules) and the lab's roles.
    from mailops.core.ansible_env import COLLECTION_PATHS

    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")} | COLLECTION_PATHS
    res = subprocess.run([str(BIN / "ansible-lint"), "--offline", "--nocolor", *targets],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
