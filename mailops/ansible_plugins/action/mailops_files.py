"""Action plugin for mailops_files: render each entry's `src` template on the
controller (as ansible.builtin.template does, search path and all), then
hand every file to the module in one run.

Task arguments:
  files: list of entries: path, and src (a template under the role's
    templates/) or content; or state: directory; or state: link and target;
    owner, group, mode, validate
    (a command with %s, run on the new file before it is put in place), and
    secret: true for content that must never be shown (sent as no_log).
  owner, group, mode: defaults for the entries (root, root, 0644 / 0755).
  lstrip_blocks, trim_blocks: for the templates (default true, true).
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template

_ENTRY_KEYS = {"path", "src", "content", "state", "target", "owner", "group", "mode",
               "validate", "secret"}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("files", "owner", "group", "mode", "lstrip_blocks", "trim_blocks"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        args = self._task.args
        entries = args.get("files")
        if not isinstance(entries, list) or not entries:
            raise AnsibleActionFail("mailops_files: `files` must be a non-empty list")
        overrides = {
            "lstrip_blocks": boolean(args.get("lstrip_blocks", True), strict=False),
            "trim_blocks": boolean(args.get("trim_blocks", True), strict=False),
        }
        files, secrets = [], []
        for entry in entries:
            if not isinstance(entry, dict) or "path" not in entry:
                raise AnsibleActionFail(f"mailops_files: every entry needs a path: {entry!r}")
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise AnsibleActionFail(f"mailops_files: {entry['path']}: unknown keys "
                                        f"{sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
            out = {k: entry[k] for k in ("path", "state", "target", "validate") if entry.get(k)}
            for key in ("owner", "group", "mode"):
                value = entry.get(key, args.get(key))
                if value is not None:
                    out[key] = str(value)
            if entry.get("state", "file") == "file":
                if "src" in entry:
                    content = self._render(entry["src"], task_vars, overrides)
                elif "content" in entry:
                    content = str(entry["content"])
                else:
                    raise AnsibleActionFail(f"mailops_files: {entry['path']}: give src "
                                            "(a template) or content")
                # A secret goes in a no_log argument: masked wherever it would show.
                if boolean(entry.get("secret", False), strict=False):
                    out["secret"] = len(secrets)
                    secrets.append(content)
                else:
                    out["content"] = content
            files.append(out)
        return self._execute_module(module_name="mailops_files",
                                    module_args={"files": files, "secret_contents": secrets},
                                    task_vars=task_vars)

    def _render(self, src: str, task_vars: dict, overrides: dict) -> str:
        try:
            source = self._find_needle("templates", src)
        except AnsibleError as e:
            raise AnsibleActionFail(str(e)) from e
        # The same search path as ansible.builtin.template, for includes.
        searchpath = []
        for p in [*task_vars.get("ansible_search_path", []), self._loader._basedir,
                  os.path.dirname(source)]:
            searchpath += [os.path.join(p, "templates"), p]
        templar = self._templar.copy_with_new_env(searchpath=searchpath,
                                                  available_variables=task_vars)
        data = trust_as_template(self._loader.get_text_file_contents(source))
        return templar.template(data, escape_backslashes=False, overrides=overrides) or ""
