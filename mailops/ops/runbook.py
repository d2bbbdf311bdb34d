"""pyinfra sessions for the day-two runbooks (status, drain, undrain):
connect to some of the inventory's hosts once, read facts from all of them
in parallel, and run named operations that read a fact first and do
nothing when nothing needs doing. Progress goes out per host and step.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from mailops.converge.bootstrap import pyinfra_host_data
from mailops.core.errors import MailopsError
from mailops.core.progress import step
from mailops.inventory.model import Host, Inventory
from mailops.verify.nodes import BACKEND, parse_haproxy_stat

HAPROXY_SOCKET = "/run/haproxy/admin.sock"


class _Facts:
    """The fact classes, made on first use (pyinfra is imported lazily)."""

    _made: dict[str, Any] = {}

    @classmethod
    def haproxy(cls) -> Any:
        if "haproxy" not in cls._made:
            from pyinfra.api import FactBase

            class HaproxyServers(FactBase):
                """(backend, server) -> the balancer's stats row."""

                def command(self) -> str:
                    return f"echo 'show stat' | socat - {HAPROXY_SOCKET}"

                def process(self, output: list[str]) -> dict:
                    return parse_haproxy_stat("\n".join(output)) if output else {}

            cls._made["haproxy"] = HaproxyServers
        return cls._made["haproxy"]

    @classmethod
    def command(cls) -> Any:
        from pyinfra.facts.server import Command

        return Command


class Session:
    """A connected pyinfra state over some hosts."""

    def __init__(self, inventory: Inventory, hosts: list[Host], phase: str) -> None:
        from pyinfra.api import Config, State
        from pyinfra.api import Inventory as PyInventory
        from pyinfra.api.connect import connect_all
        from pyinfra.api.state import StateStage

        logging.getLogger("pyinfra").setLevel(logging.CRITICAL)
        self.inventory, self.phase = inventory, phase
        self.hosts = {h.name: h for h in hosts}
        names = [(h.name, pyinfra_host_data(h, inventory)) for h in hosts]
        self.pyinv = PyInventory((names, {}))
        self.state = State(check_for_changes=False)
        self.state.init(self.pyinv, Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100))
        self.state.set_stage(StateStage.Connect)
        connect_all(self.state)
        self.down = sorted(h.name for h in self.pyinv if h not in self.state.activated_hosts)
        for name in self.down:
            step(phase, name, "UNREACHABLE over SSH")
        self.state.set_stage(StateStage.Execute)

    def pyhost(self, name: str) -> Any:
        return self.pyinv.get_host(name)

    def fact(self, name: str, fact: Any, **kwargs: Any) -> Any:
        """One fact of one host, read now (not cached: runbooks poll)."""
        from pyinfra.api.facts import get_fact

        host = self.pyhost(name)
        host.facts = {}  # a runbook polls: every read goes to the host
        return get_fact(self.state, host, fact, kwargs=kwargs or None,
                        apply_failed_hosts=False)

    def output(self, name: str, command: str) -> str:
        """A command's output on one host ('' when it fails)."""
        out = self.fact(name, _Facts.command(), command=f"{{ {command}; }} 2>&1 || true")
        return out if isinstance(out, str) else "\n".join(out or [])

    def haproxy(self, name: str) -> dict[tuple[str, str], dict[str, str]]:
        return self.fact(name, _Facts.haproxy()) or {}

    def operate(self, name: str, host: str, commands: list[str]) -> bool:
        """A named operation: the commands (already only those that need
        running, decided from a fact) run on the host; True if any ran."""
        from pyinfra.operations import server

        if not commands:
            step(self.phase, host, f"{name}: nothing to do")
            return False
        self.apply(name, host, server.shell, commands=commands)
        return True

    def apply(self, name: str, host: str, op: Any, **kwargs: Any) -> bool:
        """Any pyinfra operation, named, on one host, now; True if it changed
        something (pyinfra operations read their facts first). Each runs in
        a state of its own: pyinfra runs every operation a state holds on
        each run, and a runbook decides step by step."""
        from pyinfra.api import Config, State
        from pyinfra.api import Inventory as PyInventory
        from pyinfra.api.connect import connect_all, disconnect_all
        from pyinfra.api.operation import add_op
        from pyinfra.api.operations import run_ops
        from pyinfra.api.state import StateStage

        step(self.phase, host, name)
        pyinv = PyInventory(([(host, pyinfra_host_data(self.hosts[host], self.inventory))],
                             {}))
        state = State(check_for_changes=False)
        state.init(pyinv, Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100))
        state.set_stage(StateStage.Connect)
        connect_all(state)
        try:
            pyhost = pyinv.get_host(host)
            if pyhost not in state.activated_hosts:
                raise MailopsError(f"{host}: unreachable over SSH; {name} not done")
            state.set_stage(StateStage.Prepare)
            add_op(state, op, name=name, host=pyhost, **kwargs)
            state.set_stage(StateStage.Execute)
            run_ops(state)
            if pyhost in state.failed_hosts:
                raise MailopsError(f"{host}: {name} failed")
            return any(m.operation_meta.did_change()
                       for m in state.ops.get(pyhost, {}).values())
        finally:
            disconnect_all(state)

    def close(self) -> None:
        from pyinfra.api.connect import disconnect_all

        disconnect_all(self.state)


@contextlib.contextmanager
def session(inventory: Inventory, hosts: list[Host], phase: str) -> Iterator[Session]:
    s = Session(inventory, hosts, phase)
    try:
        yield s
    finally:
        s.close()


def set_balancer_state(s: Session, node: str, state: str) -> list[str]:
    """Every service of `node` in every balancer to `state` (ready, drain,
    maint): only what is not so already. Returns what changed."""
    # A server whose health check fails shows DOWN whatever its admin state,
    # so a drained node that is down still holds its drain: only UP is ready.
    want = {"ready": ("UP",), "drain": ("DRAIN",), "maint": ("MAINT",)}[state]
    changed = []
    for lb in (h for h in s.hosts.values() if "lb" in h.groups):
        rows = s.haproxy(lb.name)
        todo = [b for b in BACKEND.values()
                if not rows.get((b, node), {}).get("status", "").startswith(want)]
        # "UP 1/3" while a server comes back counts as ready.
        cmds = [f"echo 'set server {b}/{node} state {state}' | socat - {HAPROXY_SOCKET}"
                for b in todo]
        if s.operate(f"Set {node} to {state} in the balancer", lb.name, cmds):
            changed += [f"{lb.name}: {b}" for b in todo]
    return changed
