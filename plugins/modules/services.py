#!/usr/bin/python
"""Make systemd services run and start at boot, several in one module run.

ansible.builtin.systemd_service handles one unit per run, and a loop is one
SSH round trip per unit; on a converged host every one of them only looks.
This module looks at all of them with one systemctl call and acts only on
those that need it.
"""

from __future__ import annotations

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
      because a listed unit had C(NeedDaemonReload=yes). A reload makes the task changed.
  type: bool
  returned: always
  sample: false
"""

ARGUMENT_SPEC = dict(
    started=dict(type="list", elements="str", default=[]),
    enabled=dict(type="list", elements="str", default=[]),
)
_PROPERTIES = "UnitFileState,ActiveState,NeedDaemonReload"


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


def main() -> None:
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    started, enabled = module.params["started"], module.params["enabled"]
    units = started + [u for u in enabled if u not in started]
    states = dict(zip(units, _states(module, units), strict=True)) if units else {}
    reload = any(states[u].get("NeedDaemonReload") == "yes" for u in units)
    missing = [u for u in units if states[u].get("UnitFileState")
               not in ("enabled", "static", "alias", "indirect", "generated")]
    inactive = [u for u in started if states[u].get("ActiveState") != "active"]
    changed = sorted(set(missing) | set(inactive), key=units.index)
    if not module.check_mode:
        # First: enabling or starting a unit with stale files would run the
        # old ones (and systemd warns about it).
        if reload:
            _systemctl(module, "daemon-reload")
        for verb, todo in (("enable", missing), ("start", inactive)):
            if todo:
                _systemctl(module, verb, *todo)
    module.exit_json(changed=bool(changed) or reload, changed_units=changed,
                     daemon_reloaded=reload)


if __name__ == "__main__":
    main()
