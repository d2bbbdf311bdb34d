"""The lab: Debian hosts booted with systemd-nspawn on this machine, on a
bridge with no route out, used by the rest only through the inventory's
connection data.

May import: mailops.core, mailops.inventory.
"""
