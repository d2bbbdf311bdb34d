"""Where mailops keeps state on the controller, and where vaults live."""

from __future__ import annotations

import os
from pathlib import Path

# Lab images, lab hosts, lab keys and lab vault passwords (root only).
STATE_ROOT = Path(os.environ.get("MAILOPS_STATE", "/var/lib/mailops"))
VAULT_PASSWORD_ENV = "MAILOPS_VAULT_PASSWORD_FILE"


def lab_dir(lab_name: str) -> Path:
    """A lab's state: its hosts, SSH key and known_hosts, vault password."""
    return STATE_ROOT / "labs" / lab_name


def lab_ssh_key(lab_name: str) -> Path:
    return lab_dir(lab_name) / "ssh" / "id_ed25519"


def lab_known_hosts(lab_name: str) -> Path:
    return lab_dir(lab_name) / "ssh" / "known_hosts"


def vault_file(inventory_dir: Path) -> Path:
    return inventory_dir / "group_vars" / "all" / "vault.yml"


def vault_password_file(inventory_dir: Path, lab_name: str | None) -> Path:
    """The vault password lives outside the repository: the environment's
    choice, else the lab's own, else one per inventory under ~/.config."""
    if os.environ.get(VAULT_PASSWORD_ENV):
        return Path(os.environ[VAULT_PASSWORD_ENV])
    if lab_name:
        return lab_dir(lab_name) / "vault-pass"
    return Path.home() / ".config" / "mailops" / f"{inventory_dir.resolve().name}.vault-pass"


def ca_file(inventory_dir: Path, lab_name: str | None) -> Path:
    """Where the deployment's CA certificate is written for clients (public)."""
    if lab_name:
        return lab_dir(lab_name) / "ca.crt"
    return STATE_ROOT / "ca" / f"{inventory_dir.resolve().name}.crt"
