"""Ansible callback: one JSON line per task result (host, task, changed,
seconds, diff) into the file named by MAILOPS_RECORD_FILE. `deploy.py plan`
reads the changes and diffs from it; the benchmarks read the task times."""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: record
type: aggregate
short_description: Record task results as JSON lines for mailops
description:
  - Appends one JSON line per task result (host, task, role, whether it ran as a handler,
    status ok, failed or skipped, changed, seconds, end time and diffs) to the file named by
    the E(MAILOPS_RECORD_FILE) environment variable; without it, it records nothing.
  - C(deploy.py plan) reads the changes and diffs from that file, the benchmarks the task
    times.
  - A no_log (censored) result is recorded without its diff.
requirements:
  - Enabled with C(callbacks_enabled=mailops.mail.record) (E(ANSIBLE_CALLBACKS_ENABLED));
    mailops' own runs enable it.
author: mailops
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "mailops.mail.record"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self._path = os.environ.get("MAILOPS_RECORD_FILE")
        self._started: dict[str, float] = {}
        self._handlers: set[str] = set()

    def _write(self, entry: dict) -> None:
        if self._path:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(json.dumps(entry, default=str) + "\n")

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._handlers.add(task._uuid)

    def v2_runner_on_start(self, host, task) -> None:
        # Per host and task: with the free strategy hosts start a task at
        # different times, so the task's own start says little.
        self._started[f"{host.get_name()} {task._uuid}"] = time.monotonic()

    def _record(self, result, status: str) -> None:
        task, res = result._task, result._result
        started = self._started.pop(f"{result._host.get_name()} {task._uuid}", None)
        now = time.monotonic()
        diffs = []
        if not res.get("censored"):  # no_log: nothing of it is recorded
            items = res.get("results") if isinstance(res.get("results"), list) else [res]
            for item in items:
                if isinstance(item, dict) and item.get("changed") and item.get("diff"):
                    d = item["diff"]
                    diffs.extend(d if isinstance(d, list) else [d])
        self._write({
            "host": result._host.get_name(),
            "task": task.get_name(),
            "role": task._role.get_name() if task._role else None,
            "handler": task._uuid in self._handlers,
            "status": status,
            "changed": bool(res.get("changed")),
            "seconds": round(now - started, 3) if started is not None else 0.0,
            "ended": round(now, 3),
            "diff": diffs,
        })

    def v2_runner_on_ok(self, result) -> None:
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False) -> None:
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result) -> None:
        self._record(result, "skipped")
