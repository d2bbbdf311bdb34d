"""Stage 5, dns: the mail domains' records, desired -> plan -> safety ->
provider apply. May import: mailops.core, inventory, site, secrets.

    settings   the site's mailops_dns_* settings, validated
    desired    the records every zone must hold (model, addresses, DKIM keys)
    deploy     plan / apply / reports: the one path CLI, up, tests and bench use

    records    what a mail domain needs (Record, MailDomainDNS, desired_records)
    policy     SPF / DMARC parsing and the SPF lookup count
    ownership  owner markers: what mailops may change
    plan       make_plan, check_safety, Plan / Change (pure data)
    wire       Record <-> dnspython rdata, the normal form plans compare
    providers  rfc2136 (TSIG updates), route53 (boto3), zonefile (BIND file)
"""

from mailops.dns.plan import Change, Plan, UnsafePlanError, check_safety, make_plan
from mailops.dns.records import MailDomainDNS, Record, desired_records

__all__ = ["Change", "MailDomainDNS", "Plan", "Record", "UnsafePlanError", "check_safety",
           "desired_records", "make_plan"]
