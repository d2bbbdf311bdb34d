"""One Jinja2 environment over templates/, for Python-side rendering
(pyinfra runbooks, offline checks). The Ansible roles render the same files."""

from __future__ import annotations

from functools import cache

import jinja2

from mailops.core.environment import ROOT

TEMPLATES = ROOT / "templates"
BANNER = "Managed by mailops; local changes are overwritten."


@cache
def env() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES),
                              undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                              trim_blocks=True, lstrip_blocks=True)


def render(path: str, **context) -> str:
    return env().get_template(path).render(banner=BANNER, **context)
