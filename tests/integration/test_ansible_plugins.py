"""mailops' own Ansible module and action plugins (mailops/ansible_plugins),
run by a real ansible-playbook on this machine (connection local) against a
temporary folder: mailops_files writes only what differs, validates before
it replaces, never shows a secret; mailops_services acts only on the units
that need it (a stand-in `systemctl` records what it is asked, so this
machine's services are not touched)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mailops.core import ansible_env

BIN = Path(sys.executable).parent
SECRET = "s3cret-Key-Material-93d1"


def play(tmp: Path, tasks: str, *args: str, env: dict | None = None) -> tuple[int, str, list]:
    """Run tasks on localhost; return exit code, output and the task records."""
    (tmp / "templates").mkdir(exist_ok=True)
    book = tmp / "play.yml"
    book.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    + textwrap.indent(textwrap.dedent(tasks), "    "))
    (tmp / "hosts.yml").write_text("all:\n  hosts:\n    localhost:\n"
                                   "      ansible_connection: local\n")
    record = tmp / "record.jsonl"
    record.write_text("")
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    run_env |= ansible_env._DEFAULTS | {"MAILOPS_RECORD_FILE": str(record),
                                        "ANSIBLE_PYTHON_INTERPRETER": sys.executable}
    run_env |= env or {}
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "hosts.yml"),
                          str(book), *args], capture_output=True, text=True, timeout=120,
                         env=run_env, cwd=tmp)
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return res.returncode, res.stdout + res.stderr, rows


def files_task(tmp: Path, *, validate: str = "") -> str:
    out = tmp / "out"
    return f"""\
    - name: Write the files
      mailops_files:
        files:
          - {{path: {out}, state: directory, mode: "0750"}}
          - {{path: {out}/main.cf, src: main.cf.j2}}
          - {{path: {out}/plain, content: "plain text\\n", mode: "0600"{validate}}}
          - {{path: {out}/key.pem, content: "{SECRET}\\n", mode: "0600", secret: true}}
          - {{path: {out}/localtime, state: link, target: /usr/share/zoneinfo/UTC}}
      vars:
        greeting: hello from the template
    """


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "main.cf.j2").write_text(
        "# {{ greeting }}\n  {% for n in [1, 2] %}\nline {{ n }}\n  {% endfor %}\n")
    return tmp_path


def test_files_are_written_once_then_left_alone(workdir):
    out = workdir / "out"
    rc, log, rows = play(workdir, files_task(workdir))
    assert rc == 0, log
    assert rows[0]["changed"] is True
    # lstrip_blocks and trim_blocks, as the roles' templates expect
    assert (out / "main.cf").read_text() == "# hello from the template\nline 1\nline 2\n"
    assert (out / "plain").read_text() == "plain text\n"
    assert (out / "key.pem").read_text() == SECRET + "\n"
    assert os.readlink(out / "localtime") == "/usr/share/zoneinfo/UTC"
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert stat.S_IMODE((out / "key.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "main.cf").stat().st_mode) == 0o644
    assert not [p for p in out.iterdir() if p.name.startswith(".mailops-")]

    rc, log, rows = play(workdir, files_task(workdir))
    assert rc == 0, log
    assert rows[0]["changed"] is False

    # Only the mode drifted: put back, content untouched.
    os.chmod(out / "plain", 0o666)
    rc, log, rows = play(workdir, files_task(workdir))
    assert rc == 0 and rows[0]["changed"] is True, log
    assert stat.S_IMODE((out / "plain").stat().st_mode) == 0o600


def test_a_file_that_fails_validation_is_not_put_in_place(workdir):
    out = workdir / "out"
    assert play(workdir, files_task(workdir))[0] == 0
    (out / "plain").write_text("old and good\n")
    rc, log, _ = play(workdir, files_task(workdir, validate=", validate: 'grep -q good %s'"))
    assert rc != 0
    assert "failed `grep -q good %s`" in log and "not put in place" in log
    assert (out / "plain").read_text() == "old and good\n"
    assert not [p for p in out.iterdir() if p.name.startswith(".mailops-")]


def test_check_mode_writes_nothing_shows_diffs_and_never_a_secret(workdir):
    rc, log, rows = play(workdir, files_task(workdir), "--check", "--diff", "-vvv")
    assert rc == 0, log
    assert not (workdir / "out").exists()
    assert rows[0]["changed"] is True
    after = "".join(d.get("after", "") for d in rows[0]["diff"])
    assert "line 1" in after and "plain text" in after
    assert SECRET not in log
    assert SECRET not in json.dumps(rows)


def test_an_unknown_key_is_named(workdir):
    rc, log, _ = play(workdir, f"""\
    - name: Write a file
      mailops_files:
        files:
          - {{path: {workdir}/x, content: x, mdoe: "0600"}}
    """)
    assert rc != 0
    assert "unknown keys ['mdoe']" in log


FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in systemctl: states from $STATE (lines "unit enabled active"),
# every call appended to $CALLS. `show` prints a block per unit, as systemd
# does (empty UnitFileState for a unit it does not know).
echo "$*" >> "$CALLS"
[ "$1" = show ] || exit 0
shift 2
first=1
for u in "$@"; do
  [ $first = 1 ] || echo
  first=0
  line=$(grep "^$u " "$STATE")
  echo "UnitFileState=$(echo "$line" | cut -s -d' ' -f2)"
  echo "ActiveState=$(echo "$line" | cut -s -d' ' -f3 | grep . || echo inactive)"
done
"""


@pytest.fixture()
def fake_systemctl(tmp_path: Path) -> tuple[dict, Path]:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL)
    (bindir / "systemctl").chmod(0o755)
    (tmp_path / "state").write_text("a enabled active\nb disabled active\nc enabled inactive\n"
                                    "t enabled inactive\n")
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "STATE": str(tmp_path / "state"),
           "CALLS": str(calls)}
    return env, calls


def test_services_act_only_on_units_that_need_it(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    task = """\
    - name: Start the services and enable them at boot
      mailops_services:
        started: [a, b, c, nosuch]
        enabled: [t]
      register: result
    - name: Show the units it changed
      ansible.builtin.debug:
        msg: "changed_units={{ result.changed_units | join(',') }}"
    """
    rc, log, rows = play(tmp_path, task, env=env)
    assert rc == 0, log
    assert rows[0]["changed"] is True
    assert "changed_units=b,c,nosuch" in log
    made = calls.read_text().splitlines()
    assert "enable b nosuch" in made and "start c nosuch" in made
    assert not any(c.startswith(("enable a", "start a", "start t", "enable t")) for c in made)

    # Nothing to do: only the one look.
    (tmp_path / "state").write_text("a enabled active\nb enabled active\nc enabled active\n"
                                    "t enabled inactive\nnosuch static active\n")
    calls.write_text("")
    rc, log, rows = play(tmp_path, task, env=env)
    assert rc == 0 and rows[0]["changed"] is False, log
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["show"]


def test_services_in_check_mode_change_nothing(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    rc, log, rows = play(tmp_path, """\
    - name: Start the services and enable them at boot
      mailops_services:
        started: [b, c]
    """, "--check", env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    assert not any(c.split()[0] in ("enable", "start") for c in calls.read_text().splitlines())
