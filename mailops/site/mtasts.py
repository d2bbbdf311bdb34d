"""MTA-STS (RFC 8461): the policy the balancer serves at
https://mta-sts.<domain>/.well-known/mta-sts.txt and the id published in
`_mta-sts.<domain>` TXT. The balancer serves it, so it needs an `lb` group;
mailops_mta_sts: enforce, testing (the default: report, never refuse), none
(withdraws a published policy) or off (no policy, no records).

The balancer serves this same text: mailops.site.ansible_vars hands it to
the haproxy role."""

from __future__ import annotations

import hashlib

MODES = ("enforce", "testing", "none", "off")
MAX_AGE = 604800  # one week: senders cache the policy this long


def enabled(model, inventory) -> bool:
    """Served by the balancer with the internal CA's certificate (which
    mailops issues for the policy hosts too); an operator's own certificate
    (tls mode files) would have to name them, so there it is left off."""
    return (model.mta_sts_mode != "off" and bool(inventory.group("lb"))
            and model.tls_mode == "internal")


def hosts(model) -> list[str]:
    return [f"mta-sts.{d}" for d in model.domains]


def policy(model) -> str:
    return (f"version: STSv1\nmode: {model.mta_sts_mode}\nmx: {model.service_name}\n"
            f"max_age: {MAX_AGE}\n")


def policy_id(text: str) -> str:
    """Changes whenever the policy does, so senders fetch it again."""
    return hashlib.sha256(text.encode()).hexdigest()[:20]
