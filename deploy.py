#!/usr/bin/env python3
"""mailops front door: `python3 deploy.py <command>`. See README.md."""

import sys

from mailops.core import environment

if __name__ == "__main__":
    # Installs the controller's packages and venv on first use, then re-runs
    # this same command inside the venv; a no-op once done.
    environment.ensure()
    from mailops.cli import main

    sys.exit(main(sys.argv[1:]))
