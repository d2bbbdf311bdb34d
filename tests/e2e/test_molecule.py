"""The Molecule scenario runs its whole sequence: create (a lab host of its
own), converge, idempotence, verify, destroy."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab
ROOT = Path(__file__).resolve().parents[2]


def test_molecule_mailnode_scenario():
    if os.geteuid() != 0:
        pytest.fail("Molecule's create step boots a lab host and needs root")
    venv_bin = str(Path(sys.executable).parent)
    env = dict(os.environ, PATH=f"{venv_bin}:{os.environ['PATH']}")
    res = subprocess.run([f"{venv_bin}/molecule", "test", "-s", "mailnode"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-6000:]
    # The recaps of mail1: converge (a cold host: changes), then idempotence
    # (the same playbook again: none), then verify. Molecule frames Ansible's
    # output in box characters and colours.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    changed = [int(n) for n in re.findall(r"^[\s│]*mail1\s+:\s+ok=\d+\s+changed=(\d+)",
                                          plain, re.M)]
    assert len(changed) >= 2, out[-6000:]
    assert changed[0] > 0 and changed[1] == 0, changed
