#!/usr/bin/python
"""Make systemd services run and start at boot, several in one module run.

ansible.builtin.systemd_service handles one unit per run, and a loop is one
SSH round trip per unit; on a converged host every one of them only looks.
This module looks at all of them with one systemctl call and acts only on
those that need it.
"""

from __future__ import annotations

import os
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: services
short_description: Enable and start several systemd services in one run
description:
  - Every unit in O(started) is enabled and started (active, which includes a oneshot unit
    that has run and remains); every unit in O(enabled) is only enabled (started where it can
    run, at the next boot).
  - All units are looked at with one C(systemctl show) call; only those that are not as asked
    are enabled or started.
  - When a listed unit's files changed on disk since systemd loaded them
    (C(NeedDaemonReload=yes), for example a drop-in a role has just written), systemd is
    reloaded once (C(systemctl daemon-reload)) before anything is enabled or started, so the
    units run with their new files.
  - systemd caches the unit folders it saw at its last reload, so a drop-in folder made since
    (C(/etc/systemd/system/UNIT.d)) shows in neither C(NeedDaemonReload) nor C(DropInPaths).
    The module therefore also compares the C(.conf) files in C(UNIT.d) under each of
    O(unit_folders) with C(DropInPaths) and reloads when one is missing.
  - A start that fails with status 219/CGROUP (systemd in a container now and then cannot
    make a control process's cgroup) is tried again, up to three times.
  - Reports which units it changed; does nothing when all are as asked.
options:
  started:
    description: Units to enable and start.
    type: list
    elements: str
    default: []
  enabled:
    description: Units to enable only.
    type: list
    elements: str
    default: []
  unit_folders:
    description:
      - Where drop-in folders (C(UNIT.d)) of the listed units are looked for.
    type: list
    elements: path
    default: [/etc/systemd/system, /run/systemd/system]
attributes:
  check_mode:
    description: Reports what would be reloaded, enabled or started, and changes nothing.
    support: full
  diff_mode:
    description: Shows no diff.
    support: none
requirements:
  - systemd (C(systemctl)) on the managed host
author: mailops
"""

EXAMPLES = r"""
- name: Start Postfix and enable it at boot
  mailops.mail.services:
    started: [postfix]

- name: Start rspamd and Redis, and enable a timer that runs at boot
  mailops.mail.services:
    started: [redis-server, rspamd]
    enabled: [fstrim.timer]
  register: started

- name: Reload rspamd only when this run did not just start it
  ansible.builtin.systemd_service:
    name: rspamd
    state: reloaded
  when: "'rspamd' not in started.changed_units"
"""

RETURN = r"""
changed_units:
  description: Units that were (or in check mode would be) enabled or started, in order.
  type: list
  elements: str
  returned: always
  sample: [rspamd]
daemon_reloaded:
  description:
    - Whether systemd was (or in check mode would be) reloaded with C(systemctl daemon-reload)
      because a listed unit had C(NeedDaemonReload=yes) or a drop-in on disk that systemd
      has not loaded. A reload makes the task changed.
  type: bool
  returned: always
  sample: false
"""

ARGUMENT_SPEC = dict(
    started=dict(type="list", elements="str", default=[]),
    enabled=dict(type="list", elements="str", default=[]),
    unit_folders=dict(type="list", elements="path",
                      default=["/etc/systemd/system", "/run/systemd/system"]),
)
_PROPERTIES = "Id,UnitFileState,ActiveState,NeedDaemonReload,DropInPaths"
_CGROUP_STATUS = "219"
_START_TRIES = 3


def _states(module: AnsibleModule, units: list[str]) -> list[dict[str, str]]:
    """The _PROPERTIES of each unit, in order: `systemctl show` prints one
    block per unit given, also for a unit that does not exist."""
    rc, out, err = module.run_command(["systemctl", "show", f"--property={_PROPERTIES}",
                                       *units])
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {(err or out).strip()}", rc=rc)
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip("\n").split("\n\n")]
    if len(blocks) != len(units):
        module.fail_json(msg=f"systemctl show gave {len(blocks)} answers for {len(units)} units")
    return blocks


def _systemctl(module: AnsibleModule, *args: str) -> None:
    rc, out, err = module.run_command(["systemctl", *args])
    if rc != 0:
        module.fail_json(msg=f"systemctl {' '.join(args)} failed: {(err or out).strip()}", rc=rc)


def _unloaded_dropins(state: dict[str, str], folders: list[str]) -> list[str]:
    """Drop-ins on disk that systemd has not loaded for this unit."""
    loaded = set(state.get("DropInPaths", "").split())
    unit = state.get("Id", "")
    if not unit:
        return []
    found = []
    for base in folders:
        folder = os.path.join(base, unit + ".d")
        if os.path.isdir(folder):
            found += [os.path.join(folder, n) for n in sorted(os.listdir(folder))
                      if n.endswith(".conf")]
    return [path for path in found if path not in loaded]


def _start(module: AnsibleModule, units: list[str]) -> None:
    """systemctl start, tried again while the only failures are 219/CGROUP."""
    for attempt in range(1, _START_TRIES + 1):
        rc, out, err = module.run_command(["systemctl", "start", *units])
        if rc == 0:
            return
        rc_show, status, _ = module.run_command(
            ["systemctl", "show", "--property=ExecMainStatus", "--value", *units])
        cgroup = rc_show == 0 and _CGROUP_STATUS in status.split()
        if not cgroup or attempt == _START_TRIES:
            module.fail_json(msg=f"systemctl start {' '.join(units)} failed: "
                                 f"{(err or out).strip()}", rc=rc)
        time.sleep(2)


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    started, enabled = module.params["started"], module.params["enabled"]
    units = started + [u for u in enabled if u not in started]
    states = dict(zip(units, _states(module, units), strict=True)) if units else {}
    folders = module.params["unit_folders"]
    reload = any(states[u].get("NeedDaemonReload") == "yes" or _unloaded_dropins(states[u], folders)
                 for u in units)
    missing = [u for u in units if states[u].get("UnitFileState")
               not in ("enabled", "static", "alias", "indirect", "generated")]
    inactive = [u for u in started if states[u].get("ActiveState") != "active"]
    changed = sorted(set(missing) | set(inactive), key=units.index)
    if not module.check_mode:
        # First: enabling or starting a unit with stale files would run the
        # old ones (and systemd warns about it).
        if reload:
            _systemctl(module, "daemon-reload")
        if missing:
            _systemctl(module, "enable", *missing)
        if inactive:
            _start(module, inactive)
    module.exit_json(changed=bool(changed) or reload, changed_units=changed,
                     daemon_reloaded=reload)


if __name__ == "__main__":
    main()
