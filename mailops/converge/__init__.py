"""Stage 4, converge: bootstrap (pyinfra) and the site playbook (ansible-
playbook) that put the roles' configuration on the hosts; the playbooks live
here.

May import: mailops.core, mailops.inventory, mailops.site, mailops.secrets.
"""
