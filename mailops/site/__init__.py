"""Stage 2, site: the mail model (domains, mailboxes, limits, MTA-STS)
validated from the inventory, and every value derived from it (zones, pairs,
TSIG key name), computed once here.

May import: mailops.core, mailops.inventory.
"""
