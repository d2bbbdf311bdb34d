"""Stage 1, inventory: hosts.yml and group_vars read through ansible-core,
validated (every error with its file, key and fix), and one resolved SSH
connection per host (remote runs commands over it).

May import: mailops.core.
"""
