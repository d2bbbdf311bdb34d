"""Where and how clients reach a deployed service: the front host, the
service name, the CA file and the test accounts, from the inventory, the
mail model and the vault (read only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mailops.core.paths import ca_file, vault_file
from mailops.inventory.model import Inventory
from mailops.secrets.vault import load_secrets
from mailops.site.derived import front
from mailops.site.homes import Home, homes
from mailops.site.mailmodel import load_mail_model
from mailops.verify.mailclient import Endpoint

# Port, protocol, how TLS starts (starttls or implicit).
PORTS: tuple[tuple[int, str, str], ...] = (
    (25, "SMTP", "starttls"), (587, "submission", "starttls"), (465, "submissions", "implicit"),
    (143, "IMAP", "starttls"), (993, "IMAPS", "implicit"),
    (110, "POP3", "starttls"), (995, "POP3S", "implicit"),
)


@dataclass(frozen=True)
class Service:
    """How clients reach the deployed service."""

    service_name: str
    address: str  # the balancer's (or the only node's) address
    front: str  # that host's name
    ca_file: Path | None  # None: the system's CAs
    accounts: dict[str, str]  # test accounts: address -> password
    homes: dict[str, Home] = field(default_factory=dict)  # every mailbox's home

    def endpoint(self) -> Endpoint:
        return Endpoint(self.address, self.service_name, self.ca_file)


def service_for(inventory: Inventory) -> Service:
    """Where and how to reach the service an inventory deploys; writes the
    CA certificate (public) where clients can read it."""
    model = load_mail_model(inventory)
    secrets = load_secrets(vault_file(inventory.path), inventory.vault_password_file)
    address, name = front(inventory)
    # A mailbox kept for tests is named on the (first) front host.
    first = (inventory.group("lb") or inventory.group("mail"))[0]
    ca: Path | None = None
    if secrets.ca is not None:
        ca = ca_file(inventory.path, inventory.lab.name if inventory.lab else None)
        ca.parent.mkdir(parents=True, exist_ok=True)
        if not ca.exists() or ca.read_text() != secrets.ca.cert_pem:
            ca.write_text(secrets.ca.cert_pem)
    passwords = {a: v["password"] for a, v in secrets.mailboxes.items()}
    if inventory.lab is not None:
        # The lab's mailboxes are test accounts, the first one does the round trip.
        accounts = {m.address: passwords[m.address] for m in model.mailboxes
                    if m.address in passwords}
    else:
        # Elsewhere only a mailbox kept for tests, never a user's.
        wanted = inventory.variables.get(first.name, {}).get("mailops_verify_account")
        accounts = {wanted: passwords[wanted]} if wanted in passwords else {}
    return Service(model.service_name, address, name, ca, accounts,
                   homes(inventory, model))
