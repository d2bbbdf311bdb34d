#!/bin/sh
# Vault password for the scenario's lab (ANSIBLE_VAULT_PASSWORD_FILE): the
# lab's own password file, made (0600) on first use, as `deploy.py converge`
# would.
root="$(cd "$(dirname "$0")/../.." && pwd)"
exec "$root/.venv/bin/python" - "$root/molecule/mailnode/inventory" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, str(Path(sys.argv[1]).parents[2]))
from mailops.inventory.model import load_inventory  # noqa: E402
from mailops.secrets.vault import ensure_vault_password_file  # noqa: E402

path = ensure_vault_password_file(load_inventory(Path(sys.argv[1])).vault_password_file)
print(path.read_text().strip())
PY
