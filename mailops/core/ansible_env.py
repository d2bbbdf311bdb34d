"""Ansible settings mailops relies on, set before ansible-core is imported.

ansible.constants reads the environment once at import, so every module that
imports ansible goes through here first.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_DEFAULTS = {
    # Only our YAML inventories; a file the plugin cannot parse is an error,
    # not a warning followed by an empty inventory.
    "ANSIBLE_INVENTORY_ENABLED": "yaml",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
    "ANSIBLE_DUPLICATE_YAML_DICT_KEY": "error",
    "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
    "ANSIBLE_HOST_KEY_CHECKING": "True",
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_FORKS": "10",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    # Records every task result for `plan` (diffs) and the benchmarks (times).
    "ANSIBLE_CALLBACK_PLUGINS": str(ROOT / "mailops" / "ansible_plugins" / "callback"),
    "ANSIBLE_CALLBACKS_ENABLED": "mailops_record",
}
# mailops_files: a role's files in one module run (see its docstring). The
# roles need it wherever they run or are linted (Molecule sets the same).
PLUGIN_PATHS = {
    "ANSIBLE_LIBRARY": str(ROOT / "mailops" / "ansible_plugins" / "modules"),
    "ANSIBLE_ACTION_PLUGINS": str(ROOT / "mailops" / "ansible_plugins" / "action"),
}
_DEFAULTS |= PLUGIN_PATHS


def apply() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)


apply()
