"""Foundation every stage uses: errors that name file, key and fix, progress
lines and tables, controller paths and set-up, process records, Ansible
settings.

May import: the standard library and third-party packages only, never
another mailops stage.
"""
