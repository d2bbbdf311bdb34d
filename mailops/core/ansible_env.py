"""Ansible settings mailops relies on, set before ansible-core is imported.

ansible.constants reads the environment once at import, so every module that
imports ansible goes through here first.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The collection mailops.mail is this repository (galaxy.yml, roles/,
# plugins/): Ansible finds it through a link in the virtual environment.
COLLECTIONS = ROOT / ".venv" / "collections"
# The lab's own roles (the external mail host) live with the lab.
LAB_ROLES = ROOT / "mailops" / "lab" / "roles"

_DEFAULTS = {
    # Only our YAML inventories; a file the plugin cannot parse is an error,
    # not a warning followed by an empty inventory.
    "ANSIBLE_INVENTORY_ENABLED": "yaml",
    "ANSIBLE_INVENTORY_UNPARSED_FAILED": "True",
    "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "True",
    "ANSIBLE_DUPLICATE_YAML_DICT_KEY": "error",
    "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
    "ANSIBLE_ROLES_PATH": str(LAB_ROLES),
    "ANSIBLE_HOST_KEY_CHECKING": "True",
    "ANSIBLE_PIPELINING": "True",
    "ANSIBLE_FORKS": "10",
    "ANSIBLE_NOCOLOR": "1",
    "ANSIBLE_RETRY_FILES_ENABLED": "False",
    "ANSIBLE_PYTHON_INTERPRETER": "/usr/bin/python3",
    # Records every task result for `plan` (diffs) and the benchmarks (times).
    "ANSIBLE_CALLBACKS_ENABLED": "mailops.mail.record",
}
# What the roles need wherever they run or are linted (Molecule sets the same).
COLLECTION_PATHS = {k: _DEFAULTS[k] for k in ("ANSIBLE_COLLECTIONS_PATH", "ANSIBLE_ROLES_PATH")}


def ensure_collection_link() -> Path:
    """ansible_collections/mailops/mail -> the repository (idempotent)."""
    link = COLLECTIONS / "ansible_collections" / "mailops" / "mail"
    if not (link.is_symlink() and link.resolve() == ROOT):
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(f".mail-{os.getpid()}")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(ROOT)
        os.replace(tmp, link)
    return link


def apply() -> None:
    for key, value in _DEFAULTS.items():
        os.environ.setdefault(key, value)
    ensure_collection_link()


apply()
