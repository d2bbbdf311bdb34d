"""Stage 3, secrets: the ansible-vault file, the PKI (CA, certificates, DKIM
keys, passwords) and which secrets a deployment needs, generated once and
kept encrypted.

May import: mailops.core, mailops.inventory, mailops.site.
"""
