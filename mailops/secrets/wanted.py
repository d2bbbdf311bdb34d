"""Which secrets a deployment needs, and completing the vault with them:
the CA and the certificate (for the service name and, when the balancer
serves MTA-STS, the policy hosts), DKIM keys, the doveadm password, mailbox
passwords, and the TSIG key of the deployment's own name server."""

from __future__ import annotations

import base64
import secrets as _random
from collections.abc import Callable

from mailops.core.errors import MailopsError
from mailops.core.paths import vault_file
from mailops.core.progress import step
from mailops.inventory.model import Inventory, load_inventory
from mailops.secrets.pki import random_password
from mailops.secrets.vault import ensure_secrets as complete_vault
from mailops.secrets.vault import ensure_vault_password_file
from mailops.site import mtasts
from mailops.site.derived import tsig_key_name
from mailops.site.mailmodel import MailModel

TSIG_PREFIX = "tsig_"  # vault_extra key: tsig_<key name>
# vault_extra: the legacy server's admin login (what `migrate` reads it
# with) and, in a lab, its users' passwords (legacy_user_<name>).
MIGRATE_ADMIN_PASSWORD = "migrate_admin_password"
LEGACY_USER_PREFIX = "legacy_user_"


def new_tsig_secret() -> str:
    """A random HMAC-SHA256 key, base64, as `tsig-keygen` makes it."""
    return base64.b64encode(_random.token_bytes(32)).decode("ascii")


def wanted_extra(inventory: Inventory) -> dict[str, Callable[[], str]]:
    """vault_extra entries to generate: the TSIG key, when the inventory runs
    its own name server (a `dns` host); in a lab with a legacy server (the
    on-premises box a migration reads), its admin password and its users'.
    An outside server's key, or a real legacy server's admin password, is
    the operator's to put in the vault."""
    wanted: dict[str, Callable[[], str]] = {}
    if inventory.group("dns"):
        wanted[TSIG_PREFIX + tsig_key_name(inventory)] = new_tsig_secret
    if inventory.lab is not None:
        for host in inventory.group("legacy"):
            wanted[MIGRATE_ADMIN_PASSWORD] = random_password
            users = inventory.variables.get(host.name, {}).get("mailops_legacy_users", [])
            for user in users if isinstance(users, list) else []:
                wanted[LEGACY_USER_PREFIX + str(user)] = random_password
    return wanted


def certificate_names(model: MailModel, inventory: Inventory) -> list[str]:
    """The service name first, then the MTA-STS policy hosts the balancer serves."""
    return [model.service_name,
            *(mtasts.hosts(model) if mtasts.enabled(model, inventory) else [])]


def ensure_secrets(inventory: Inventory, model: MailModel) -> tuple[Inventory, list[str]]:
    """Complete the vault; returns the inventory re-read when it changed."""
    vault = vault_file(inventory.path)
    password = inventory.vault_password_file
    if vault.exists() and not password.exists():
        raise MailopsError(f"{vault}: encrypted with a password file {password} that is gone;"
                           " set MAILOPS_VAULT_PASSWORD_FILE to it (never make a new one for an"
                           " existing vault)")
    ensure_vault_password_file(password)
    _, changes = complete_vault(
        vault, password, certificate_names(model, inventory), list(model.domains),
        model.tls_mode, mailboxes=[m.address for m in model.mailboxes if m.password_hash is None],
        extra_wanted=wanted_extra(inventory))
    for change in changes:
        step("secrets", "-", change)
    if changes:
        inventory = load_inventory(inventory.path)
    return inventory, changes
