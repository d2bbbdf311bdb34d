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
module: mailops_services
short_description: Enable and start several systemd services in one run
description:
  - Every unit in O(started) is enabled and started (active, which includes a oneshot unit
    that has run and remains); every unit in O(enabled) is only enabled (started where it can
    run, at the next boot).
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
author: mailops
"""

RETURN = r"""
changed_units:
  description: Units that were (or in check mode would be) enabled or started.
  type: list
  elements: str
  returned: always
"""


def _states(module: AnsibleModule, units: list[str]) -> list[dict[str, str]]:
    """UnitFileState and ActiveState of each unit, in order: `systemctl show`
    prints one block per unit given, also for a unit that does not exist."""
    rc, out, err = module.run_command(["systemctl", "show", "--property=UnitFileState,ActiveState",
                                       *units])
    if rc != 0:
        module.fail_json(msg=f"systemctl show failed: {(err or out).strip()}", rc=rc)
    blocks = [dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
              for block in out.strip("\n").split("\n\n")]
    if len(blocks) != len(units):
        module.fail_json(msg=f"systemctl show gave {len(blocks)} answers for {len(units)} units")
    return blocks


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(started=dict(type="list", elements="str", default=[]),
                           enabled=dict(type="list", elements="str", default=[])),
        supports_check_mode=True,
    )
    started, enabled = module.params["started"], module.params["enabled"]
    units = started + [u for u in enabled if u not in started]
    states = dict(zip(units, _states(module, units), strict=True)) if units else {}
    missing = [u for u in units if states[u].get("UnitFileState")
               not in ("enabled", "static", "alias", "indirect", "generated")]
    inactive = [u for u in started if states[u].get("ActiveState") != "active"]
    changed = sorted(set(missing) | set(inactive), key=units.index)
    if changed and not module.check_mode:
        for verb, todo in (("enable", missing), ("start", inactive)):
            if todo:
                rc, out, err = module.run_command(["systemctl", verb, *todo])
                if rc != 0:
                    module.fail_json(msg=f"systemctl {verb} {' '.join(todo)} failed: "
                                         f"{(err or out).strip()}", rc=rc)
    module.exit_json(changed=bool(changed), changed_units=changed)


if __name__ == "__main__":
    main()
