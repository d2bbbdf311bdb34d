"""The collection's own plugins (plugins/ of mailops.mail), run by a real
ansible-playbook on this machine (connection local) against a temporary
folder: mailops.mail.files writes only what differs, validates before it
replaces, checks a set of files in a staging copy before any of them
replaces the live one, never shows a secret; mailops.mail.services acts only
on the units that need it and reloads systemd first when a unit needs it (a
stand-in `systemctl` records what it is asked, so this machine's services
are not touched); ansible-doc shows every option of each."""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mailops.core import ansible_env

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SECRET = "s3cret-Key-Material-93d1"


@functools.cache
def mailops_ansible_settings() -> dict[str, str]:
    """The ANSIBLE_* settings mailops gives its own runs: what
    ansible_env.apply() sets in an environment without any (the collection
    path, the record callback, YAML inventories only, ...)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    code = ("import json, os; from mailops.core import ansible_env; "
            "print(json.dumps({k: v for k, v in os.environ.items() if k.startswith('ANSIBLE_')}))")
    res = subprocess.run([sys.executable, "-c", code], env=clean, cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    settings = json.loads(res.stdout)
    assert ansible_env.COLLECTION_PATHS.items() <= settings.items()
    return settings


def ansible_run_env(**extra: str) -> dict[str, str]:
    ansible_env.ensure_collection_link()
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    # This venv's Python on localhost, not the managed hosts' /usr/bin/python3.
    return env | mailops_ansible_settings() | {"ANSIBLE_PYTHON_INTERPRETER": sys.executable} | extra


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
    run_env = ansible_run_env(MAILOPS_RECORD_FILE=str(record)) | (env or {})
    res = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp / "hosts.yml"),
                          str(book), *args], capture_output=True, text=True, timeout=120,
                         env=run_env, cwd=tmp)
    rows = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    return res.returncode, res.stdout + res.stderr, rows


def no_traceback(log: str) -> bool:
    return "Traceback" not in log and "MODULE FAILURE" not in log


def files_task(tmp: Path, *, validate: str = "") -> str:
    out = tmp / "out"
    return f"""\
    - name: Write the files
      mailops.mail.files:
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


def test_changed_paths_names_what_changed_in_order(workdir):
    task = textwrap.dedent(files_task(workdir)) + textwrap.dedent("""\
      register: result
    - name: Show what changed
      ansible.builtin.debug:
        msg: "changed_paths={{ result.changed_paths | join(',') }};"
    """)
    out = workdir / "out"
    rc, log, _ = play(workdir, task)
    assert rc == 0, log
    assert (f"changed_paths={out},{out}/main.cf,{out}/plain,{out}/key.pem,{out}/localtime;"
            in log)
    (out / "main.cf").write_text("drifted\n")
    rc, log, _ = play(workdir, task)
    assert rc == 0 and f"changed_paths={out}/main.cf;" in log, log


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
      mailops.mail.files:
        files:
          - {{path: {workdir}/x, content: x, mdoe: "0600"}}
    """)
    assert rc != 0
    assert "unknown keys ['mdoe']" in log


@pytest.mark.parametrize("mode, shown", [
    ('"0x644"', "'0x644'"),
    ('"999"', "'999'"),
    ('"rw-r--r--"', "'rw-r--r--'"),
    ('"06444"', "'06444'"),
    # YAML 1.1 reads an unquoted 0644 as the number 420.
    ("0644", "420"),
])
def test_a_bad_mode_is_named_and_nothing_is_written(workdir, mode, shown):
    first, bad = workdir / "first", workdir / "bad"
    rc, log, rows = play(workdir, f"""\
    - name: Write two files
      mailops.mail.files:
        files:
          - {{path: {first}, content: "first\\n"}}
          - {{path: {bad}, content: "bad\\n", mode: {mode}}}
    """)
    assert rc != 0 and rows[0]["status"] == "failed"
    assert f"{bad}: " in log and shown in log, log
    assert 'octal digits like \\"0644\\"' in log, log
    assert no_traceback(log), log
    # Every entry is checked before the first is written.
    assert not first.exists() and not bad.exists()


@pytest.mark.parametrize("entry, message", [
    ('content: x, owner: no-such-user-mailops', "no such user: 'no-such-user-mailops'"),
    ('content: x, group: no-such-group-mailops', "no such group: 'no-such-group-mailops'"),
    ("content: x, validate: 'true'", "validate must contain %s"),
    ("state: link", "a link needs a target"),
])
def test_other_bad_entries_fail_with_a_message(workdir, entry, message):
    rc, log, _ = play(workdir, f"""\
    - name: Write a file
      mailops.mail.files:
        files:
          - {{path: {workdir}/x, {entry}}}
    """)
    assert rc != 0
    assert f"{workdir}/x: " in log and message in log, log
    assert no_traceback(log), log
    assert not os.path.lexists(workdir / "x")


# --- checks: a set of files checked in a staging copy before it is written

@pytest.fixture()
def etc(tmp_path: Path) -> Path:
    """A live configuration folder as a package leaves it: a file the task
    does not write, a link out of it, a subfolder, a FIFO."""
    base = tmp_path / "etc-app"
    (base / "conf.d").mkdir(parents=True)
    (base / "main.cf").write_text("old main\n")
    (base / "keep.cf").write_text("needed by main.cf\n")
    (base / "conf.d" / "extra.cf").write_text("extra\n")
    (base / "makedefs.out").symlink_to("/usr/share/nonexistent/makedefs.out")
    os.mkfifo(base / "pipe")
    return base


def checks_task(tmp: Path, base: Path, command: str, main: str, *extra: str) -> str:
    lines = "".join(f"\n          - {e}" for e in extra)
    return f"""\
    - name: Write the set
      mailops.mail.files:
        files:
          - {{path: {base}/main.cf, content: "{main}\\n"}}
          - {{path: {base}/master.cf, content: "new master\\n", mode: "0640"}}
          - {{path: {base}/key.pem, content: "{SECRET}\\n", mode: "0640", secret: true}}
          - {{path: {tmp}/outside, content: "outside the base\\n"}}{lines}
        checks:
          - base: {base}
            command: {json.dumps(command)}
      register: result
    - name: Show what ran
      ansible.builtin.debug:
        msg: "checked={{{{ result.checked_bases | join(',') }}}};"
    """


def test_a_failing_check_writes_nothing_of_the_task(tmp_path, etc):
    log_file = tmp_path / "check.log"
    command = (f"echo %d >> {log_file}; if grep -rl BROKEN %d; then "
               "echo 'main.cf: line 1: BROKEN is not a parameter' >&2; exit 3; fi")
    before = {p: p.read_bytes() for p in etc.rglob("*") if p.is_file() and not p.is_fifo()}
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "BROKEN main"))
    assert rc != 0 and rows[0]["status"] == "failed", log
    assert f"check of {etc} failed" in log and "exited 3" in log, log
    assert command.replace('"', '\\"') in log, log
    assert "BROKEN is not a parameter" in log and "nothing of this task was written" in log
    assert no_traceback(log), log
    # The live files byte for byte as they were; nothing new, inside or out.
    assert {p: p.read_bytes() for p in etc.rglob("*")
            if p.is_file() and not p.is_fifo()} == before
    assert not (etc / "master.cf").exists() and not (etc / "key.pem").exists()
    assert not (tmp_path / "outside").exists()
    # The check ran once, on a staging folder that is gone.
    staged = log_file.read_text().split()
    assert len(staged) == 1 and not Path(staged[0]).exists()
    assert not Path(staged[0]).is_relative_to(etc)


def test_a_passing_check_sees_the_live_and_new_files_then_all_is_written(tmp_path, etc):
    log_file, listing = tmp_path / "check.log", tmp_path / "listing"
    # What the staging folder held, as the check saw it (no secret printed).
    command = (f"echo %d >> {log_file}; cd %d && "
               f"find . -printf '%p %y %m\\n' | sort > {listing} && "
               f"grep -q 'needed by main.cf' keep.cf && grep -q 'new main' main.cf && "
               f"grep -qx '{SECRET}' key.pem")
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "new main"))
    assert rc == 0, log
    assert rows[0]["changed"] is True and f"checked={etc};" in log
    seen = listing.read_text().splitlines()
    assert ". d 700" in seen  # private
    assert {"./keep.cf f 644", "./conf.d d 755", "./conf.d/extra.cf f 644",
            "./main.cf f 644", "./master.cf f 640", "./key.pem f 600",
            "./makedefs.out l 777"} == set(seen) - {". d 700"}, seen  # no FIFO
    staged = log_file.read_text().split()
    assert len(staged) == 1 and not Path(staged[0]).exists()
    # Then everything was written, the secret with its own mode.
    assert (etc / "main.cf").read_text() == "new main\n"
    assert (etc / "master.cf").read_text() == "new master\n"
    assert (etc / "key.pem").read_text() == SECRET + "\n"
    assert stat.S_IMODE((etc / "key.pem").stat().st_mode) == 0o640
    assert (tmp_path / "outside").read_text() == "outside the base\n"
    assert os.readlink(etc / "makedefs.out") == "/usr/share/nonexistent/makedefs.out"
    assert SECRET not in log

    # Nothing differs: no check runs, nothing changes.
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "new main"))
    assert rc == 0 and rows[0]["changed"] is False, log
    assert "checked=;" in log
    assert len(log_file.read_text().split()) == 1

    # A change outside the base only: its check does not run either.
    (tmp_path / "outside").write_text("drifted\n")
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "new main"))
    assert rc == 0 and rows[0]["changed"] is True and "checked=;" in log, log
    assert len(log_file.read_text().split()) == 1


def test_check_mode_runs_no_check_and_reports_the_change(tmp_path, etc):
    log_file = tmp_path / "check.log"
    command = f"echo %d >> {log_file}"
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "new main"), "--check")
    assert rc == 0 and rows[0]["changed"] is True, log
    assert not log_file.exists()
    assert (etc / "main.cf").read_text() == "old main\n" and not (etc / "master.cf").exists()


def test_a_failing_check_never_shows_a_secret(tmp_path, etc):
    command = "cat %d/key.pem; cat %d/key.pem >&2; exit 1"
    rc, log, rows = play(tmp_path, checks_task(tmp_path, etc, command, "new main"), "-vvv")
    assert rc != 0 and f"check of {etc} failed" in log, log
    assert SECRET not in log and SECRET not in json.dumps(rows)
    assert not (etc / "key.pem").exists()


def test_a_check_never_writes_through_a_live_link(tmp_path, etc):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (etc / "sub").symlink_to(elsewhere)
    rc, log, _ = play(tmp_path, checks_task(tmp_path, etc, "true %d", "new main",
                                            f"{{path: {etc}/sub/x.cf, content: x}}"))
    assert rc != 0 and "sub is a symbolic link" in log, log
    assert no_traceback(log), log
    assert list(elsewhere.iterdir()) == []
    assert (etc / "main.cf").read_text() == "old main\n"


@pytest.mark.parametrize("checks, message", [
    ('"/etc/postfix"', "`checks` must be a list"),
    ('[{base: /etc/postfix}]', "missing ['command']"),
    ('[{base: /etc/postfix, command: "postfix check", extra: 1}]', "unknown keys ['extra']"),
    ('[{base: /etc/postfix, command: "postfix check"}]', "must contain %d"),
    ('[{base: etc/postfix, command: "postfix -c %d check"}]', "absolute folder path"),
    ('["postfix -c %d check"]', "every check must be a dict"),
])
def test_bad_checks_are_refused_before_anything_runs(workdir, checks, message):
    rc, log, _ = play(workdir, f"""\
    - name: Write a file
      mailops.mail.files:
        files:
          - {{path: {workdir}/x, content: x}}
        checks: {checks}
    """)
    assert rc != 0 and message in log, log
    assert no_traceback(log), log
    assert not (workdir / "x").exists()


# --- mailops.mail.services, against a stand-in systemctl

FAKE_SYSTEMCTL = """#!/bin/sh
# Stand-in systemctl: states from $STATE (lines "unit enabled active", and a
# fourth word "reload" for a unit whose files changed on disk, or "cgroup" for
# a unit whose first start fails with status 219), every call appended to
# $CALLS. `show` prints a block per unit, as systemd does (empty
# UnitFileState for a unit it does not know); daemon-reload clears "reload"
# and loads the drop-ins in $UNITS/UNIT.service.d (none are loaded before).
echo "$*" >> "$CALLS"
if [ "$1" = daemon-reload ]; then
  sed -i 's/ reload$//' "$STATE"
  touch "$STATE.reloaded"
  exit 0
fi
if [ "$1" = start ]; then
  shift
  for u in "$@"; do
    if grep -q "^$u .* cgroup$" "$STATE" && [ ! -e "$STATE.$u.tried" ]; then
      touch "$STATE.$u.tried"
      echo "Job for $u.service failed because the control process exited" >&2
      exit 1
    fi
  done
  exit 0
fi
[ "$1" = show ] || exit 0
if [ "$2" = --property=ExecMainStatus ]; then
  shift 3
  for u in "$@"; do
    if grep -q "^$u .* cgroup$" "$STATE"; then echo 219; else echo 0; fi
  done
  exit 0
fi
shift 2
first=1
for u in "$@"; do
  [ $first = 1 ] || echo
  first=0
  line=$(grep "^$u " "$STATE")
  echo "Id=$u.service"
  loaded=""
  if [ -e "$STATE.reloaded" ]; then
    loaded=$(ls "$UNITS/$u.service.d/"*.conf 2>/dev/null | tr '\n' ' ')
  fi
  echo "DropInPaths=$loaded"
  echo "UnitFileState=$(echo "$line" | cut -s -d' ' -f2)"
  echo "ActiveState=$(echo "$line" | cut -s -d' ' -f3 | grep . || echo inactive)"
  if [ "$(echo "$line" | cut -s -d' ' -f4)" = reload ]; then
    echo "NeedDaemonReload=yes"
  else
    echo "NeedDaemonReload=no"
  fi
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
    (tmp_path / "units").mkdir()
    env = {"PATH": f"{bindir}:{os.environ['PATH']}", "STATE": str(tmp_path / "state"),
           "CALLS": str(calls), "UNITS": str(tmp_path / "units")}
    return env, calls


SERVICES_TASK = """\
- name: Start the services and enable them at boot
  mailops.mail.services:
    started: [a, b, c, nosuch]
    enabled: [t]
    unit_folders: ["{{ lookup('ansible.builtin.env', 'UNITS') }}"]
  register: result
- name: Show the units it changed
  ansible.builtin.debug:
    msg: "changed_units={{ result.changed_units | join(',') }};
      daemon_reloaded={{ result.daemon_reloaded }};"
"""


def test_services_act_only_on_units_that_need_it(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0, log
    assert rows[0]["changed"] is True
    assert "changed_units=b,c,nosuch;" in log and "daemon_reloaded=False;" in log
    made = calls.read_text().splitlines()
    assert "enable b nosuch" in made and "start c nosuch" in made
    assert "daemon-reload" not in made
    assert not any(c.startswith(("enable a", "start a", "start t", "enable t")) for c in made)

    # Nothing to do: only the one look.
    (tmp_path / "state").write_text("a enabled active\nb enabled active\nc enabled active\n"
                                    "t enabled inactive\nnosuch static active\n")
    calls.write_text("")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is False, log
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["show"]


def test_services_reload_systemd_once_first_when_a_unit_needs_it(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    (tmp_path / "state").write_text("a enabled active reload\nb enabled active\n"
                                    "c enabled inactive reload\nt enabled inactive\n"
                                    "nosuch static active\n")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    assert "changed_units=c;" in log and "daemon_reloaded=True;" in log
    made = calls.read_text().splitlines()
    assert [c.split()[0] for c in made] == ["show", "daemon-reload", "start"], made
    assert "NeedDaemonReload" in made[0]

    # Only a reload to do: still a change, reported.
    (tmp_path / "state").write_text("a enabled active\nb enabled active\nc enabled active\n"
                                    "t enabled inactive reload\nnosuch static active\n")
    calls.write_text("")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    assert "changed_units=;" in log and "daemon_reloaded=True;" in log
    assert calls.read_text().split("\n")[1:] == ["daemon-reload", ""]

    # Reloaded: nothing left to do.
    calls.write_text("")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is False and "daemon_reloaded=False;" in log, log
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["show"]


def test_services_reload_systemd_for_a_drop_in_folder_it_has_not_seen(tmp_path,
                                                                     fake_systemctl):
    """systemd's NeedDaemonReload stays "no" for a drop-in folder made since its
    last reload (it caches the unit folders): the module looks on disk."""
    env, calls = fake_systemctl
    (tmp_path / "state").write_text("a enabled active\nb enabled active\nc enabled active\n"
                                    "t enabled inactive\nnosuch static active\n")
    dropin = tmp_path / "units" / "c.service.d"
    dropin.mkdir()
    (dropin / "mailops.conf").write_text("[Service]\n")
    (dropin / "notes.txt").write_text("not a drop-in\n")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    assert "daemon_reloaded=True;" in log
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["show", "daemon-reload"]

    # Loaded now (DropInPaths lists it): nothing to do.
    calls.write_text("")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is False and "daemon_reloaded=False;" in log, log


def test_services_try_a_start_again_after_a_cgroup_failure(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    (tmp_path / "state").write_text("a enabled active\nb enabled active\n"
                                    "c enabled inactive cgroup\nt enabled inactive\n"
                                    "nosuch static active\n")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    made = calls.read_text().splitlines()
    assert made.count("start c") == 2, made
    assert any("ExecMainStatus" in c for c in made), made


def test_services_fail_at_once_on_any_other_start_failure(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    bindir = tmp_path / "bin"
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL.replace(
        'if [ "$1" = start ]; then', 'if [ "$1" = start ]; then\n  echo "bad unit" >&2; exit 1'))
    (tmp_path / "state").write_text("a enabled active\nb enabled active\n"
                                    "c enabled inactive\nt enabled inactive\n"
                                    "nosuch static active\n")
    rc, log, rows = play(tmp_path, SERVICES_TASK, env=env)
    assert rc != 0 and "systemctl start c failed: bad unit" in log, log
    assert calls.read_text().splitlines().count("start c") == 1
    assert no_traceback(log), log


def test_services_in_check_mode_change_nothing(tmp_path, fake_systemctl):
    env, calls = fake_systemctl
    (tmp_path / "state").write_text("b disabled active\nc enabled inactive reload\n")
    rc, log, rows = play(tmp_path, """\
    - name: Start the services and enable them at boot
      mailops.mail.services:
        started: [b, c]
      register: result
    - name: Show what would change
      ansible.builtin.debug:
        msg: "daemon_reloaded={{ result.daemon_reloaded }};"
    """, "--check", env=env)
    assert rc == 0 and rows[0]["changed"] is True, log
    assert "daemon_reloaded=True;" in log
    assert [c.split()[0] for c in calls.read_text().splitlines()] == ["show"]


# --- documentation

def load_plugin(relpath: str):
    spec = importlib.util.spec_from_file_location(f"_plugin_{Path(relpath).stem}",
                                                  ROOT / relpath)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MODULES = {"mailops.mail.files": "plugins/modules/files.py",
           "mailops.mail.services": "plugins/modules/services.py"}


def ansible_doc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "ansible-doc"), *args], capture_output=True, text=True,
                          timeout=120, env=ansible_run_env(), cwd=ROOT)


def option_names(spec: dict) -> set[str]:
    names = set(spec)
    for value in spec.values():
        names |= option_names(value.get("options") or {})
    return names


@pytest.mark.parametrize("name", sorted(MODULES))
def test_ansible_doc_shows_every_option_of_a_module(name):
    res = ansible_doc("-t", "module", name)
    assert res.returncode == 0, res.stdout + res.stderr
    spec = load_plugin(MODULES[name]).ARGUMENT_SPEC
    shown = set(re.findall(r"^\s*[-=] (\w+)\s", res.stdout, re.M))
    assert option_names(spec) <= shown, option_names(spec) - shown
    for section in ("EXAMPLES:", "RETURN VALUES:", "AUTHOR:"):
        assert section in res.stdout
    assert "[WARNING]" not in res.stderr, res.stderr


def test_ansible_doc_shows_the_record_callback():
    res = ansible_doc("-t", "callback", "mailops.mail.record")
    assert res.returncode == 0, res.stdout + res.stderr
    for part in ("CALLBACK mailops.mail.record", "MAILOPS_RECORD_FILE", "REQUIREMENTS:",
                 "AUTHOR:", "TYPE: aggregate", "NAME: record"):
        assert part in res.stdout, res.stdout


def doc_matches_spec(doc: dict, spec: dict, where: str = "") -> list[str]:
    """What validate-modules' argument-spec check would find: options not in
    both, and type, default, required, choices, elements that differ."""
    problems = [f"{where}{k}: documented, not in the argument spec" for k in set(doc) - set(spec)]
    problems += [f"{where}{k}: in the argument spec, not documented" for k in set(spec) - set(doc)]
    for key in set(doc) & set(spec):
        d, s = doc[key], spec[key]
        if not d.get("description"):
            problems.append(f"{where}{key}: no description")
        for field, fallback in (("type", "str"), ("default", None), ("required", False),
                                ("choices", None), ("elements", None)):
            if d.get(field, fallback) != s.get(field, fallback):
                problems.append(f"{where}{key}: {field} {d.get(field)!r} in the documentation, "
                                f"{s.get(field)!r} in the argument spec")
        if "options" in s or "suboptions" in d:
            problems += doc_matches_spec(d.get("suboptions") or {}, s.get("options") or {},
                                         f"{where}{key}.")
    return problems


@pytest.mark.parametrize("name", sorted(MODULES))
def test_the_documentation_matches_the_argument_spec(name):
    res = ansible_doc("-t", "module", "--json", name)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)[name]
    plugin = load_plugin(MODULES[name])
    assert doc_matches_spec(data["doc"]["options"], plugin.ARGUMENT_SPEC) == []
    assert data["doc"]["author"] and data["doc"]["short_description"]
    for value in data["return"].values():
        assert {"description", "type", "returned"} <= set(value), value
    # The examples are tasks of this module that use only its options.
    examples = yaml.safe_load(plugin.EXAMPLES)
    used = [t[name] for t in examples if name in t]
    assert used and all(set(args) <= set(plugin.ARGUMENT_SPEC) for args in used)
