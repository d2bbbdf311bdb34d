"""Stage 6, verify: the deployed service checked from outside like a client and
another mail server, the cluster as the balancer sees it, and the DNS;
report holds Row/Report/Outcome.

May import: mailops.core, mailops.inventory, mailops.site, mailops.secrets,
mailops.dns (and mailops.converge, never needed so far).
"""
