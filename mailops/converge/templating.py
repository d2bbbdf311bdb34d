"""Jinja2 for Python-side rendering: the templates `deploy.py bootstrap`
(pyinfra) writes live in templates/ at the top of the repository; the
roles' own templates (roles/<role>/templates/) are rendered by Ansible, and
by the offline tests through the same environment settings."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import jinja2

from mailops.core.environment import ROOT

TEMPLATES = ROOT / "templates"
BANNER = "Managed by mailops; local changes are overwritten."


@cache
def env(root: Path = TEMPLATES) -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(root),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(path: str, root: Path = TEMPLATES, **context) -> str:
    return env(root).get_template(path).render(banner=BANNER, **context)
