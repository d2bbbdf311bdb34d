"""Action plugin for mailops.mail.files: render each entry's `src` template on the
controller (as ansible.builtin.template does, search path and all), then
hand every file to the module in one run.

The task's options are documented with the module (plugins/modules/files.py,
`ansible-doc mailops.mail.files`). What happens here: `src` becomes the
entry's content; a `secret: true` entry's content moves into the no_log
`secret_contents` (in the order of the secret entries) so it is masked
wherever it would show; the task's owner, group and mode fill in the entries
that give none; `checks` are checked for shape and passed on.
"""

from __future__ import annotations

import os

from ansible.errors import AnsibleActionFail, AnsibleError
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.plugins.action import ActionBase
from ansible.template import trust_as_template

_ENTRY_KEYS = {"path", "src", "content", "state", "target", "owner", "group", "mode",
               "validate", "secret"}
_CHECK_KEYS = {"base", "command"}


def _checks(value) -> list[dict]:
    """The task's checks, each {base: absolute folder, command: with %d}."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise AnsibleActionFail("mailops.mail.files: `checks` must be a list of "
                                f"{{base, command}}, not {type(value).__name__}")
    out = []
    for check in value:
        if not isinstance(check, dict):
            raise AnsibleActionFail(f"mailops.mail.files: every check must be a dict with base "
                                    f"and command: {check!r}")
        unknown, missing = set(check) - _CHECK_KEYS, _CHECK_KEYS - set(check)
        if unknown or missing:
            raise AnsibleActionFail(f"mailops.mail.files: check {check!r}: "
                                    + (f"unknown keys {sorted(unknown)}; " if unknown else "")
                                    + (f"missing {sorted(missing)}; " if missing else "")
                                    + f"a check has exactly {sorted(_CHECK_KEYS)}")
        base, command = check["base"], check["command"]
        if not isinstance(base, str) or not os.path.isabs(base):
            raise AnsibleActionFail(f"mailops.mail.files: check base must be an absolute "
                                    f"folder path: {base!r}")
        if not isinstance(command, str) or "%d" not in command:
            raise AnsibleActionFail(f"mailops.mail.files: the check command for {base} must "
                                    f"contain %d (the staging folder): {command!r}")
        out.append({"base": str(base), "command": str(command)})
    return out


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("files", "checks", "owner", "group", "mode", "lstrip_blocks",
                             "trim_blocks"))

    def run(self, tmp=None, task_vars=None):
        task_vars = task_vars or {}
        super().run(tmp, task_vars)
        args = self._task.args
        entries = args.get("files")
        if not isinstance(entries, list) or not entries:
            raise AnsibleActionFail("mailops.mail.files: `files` must be a non-empty list")
        checks = _checks(args.get("checks"))
        overrides = {
            "lstrip_blocks": boolean(args.get("lstrip_blocks", True), strict=False),
            "trim_blocks": boolean(args.get("trim_blocks", True), strict=False),
        }
        files, secrets = [], []
        for entry in entries:
            if not isinstance(entry, dict) or "path" not in entry:
                raise AnsibleActionFail(f"mailops.mail.files: every entry needs a path: {entry!r}")
            unknown = set(entry) - _ENTRY_KEYS
            if unknown:
                raise AnsibleActionFail(f"mailops.mail.files: {entry['path']}: unknown keys "
                                        f"{sorted(unknown)}; allowed: {sorted(_ENTRY_KEYS)}")
            out = {k: str(entry[k]) for k in ("path", "state", "target", "validate")
                   if entry.get(k)}
            for key in ("owner", "group"):
                value = entry.get(key, args.get(key))
                if value is not None:
                    out[key] = str(value)
            mode = entry.get("mode", args.get("mode"))
            if mode is not None:
                # As given: the module refuses a number (an unquoted YAML 0644
                # is 420) instead of a str() here turning it into "420".
                out["mode"] = str(mode) if isinstance(mode, str) else mode
            if entry.get("state", "file") == "file":
                if "src" in entry:
                    content = self._render(entry["src"], task_vars, overrides)
                elif "content" in entry:
                    content = str(entry["content"])
                else:
                    raise AnsibleActionFail(f"mailops.mail.files: {entry['path']}: give src "
                                            "(a template) or content")
                # A secret goes in a no_log argument: masked wherever it would show.
                if boolean(entry.get("secret", False), strict=False):
                    out["secret"] = True
                    secrets.append(content)
                else:
                    out["content"] = content
            files.append(out)
        return self._execute_module(module_name="mailops.mail.files",
                                    module_args={"files": files, "checks": checks,
                                                 "secret_contents": secrets},
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
