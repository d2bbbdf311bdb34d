"""Stage 8, ops: runbooks for day two and for disasters (moving a mailbox
to another home; backup and restore), each safe to re-run.

May import: every stage before it (core to verify); hosts are reached
through the inventory's connection, never through mailops.lab.
"""
