"""bootstrap: a bare Debian host (a shell and SSH) made ready for Ansible.

Written with pyinfra: each operation reads facts first and does nothing when
the host is already right, so a second run reports zero changes.
Steps: hostname and /etc/hosts, the apt proxy where the inventory sets one,
python3 and python3-apt, time sync (chrony) and the time zone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from io import StringIO

from mailops.converge.templating import render
from mailops.core.progress import step, table
from mailops.inventory.model import Host, Inventory

PACKAGES = ["python3", "python3-apt", "chrony"]


@dataclass
class BootstrapResult:
    # host -> (operations run, operations that changed something)
    per_host: dict[str, tuple[int, int]] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)

    @property
    def changed(self) -> int:
        return sum(c for _, c in self.per_host.values())

    def table(self) -> str:
        rows = [[h, ops, ch, "failed" if h in self.failed else "ok"]
                for h, (ops, ch) in sorted(self.per_host.items())]
        return table(["host", "operations", "changed", "result"], rows)


def pyinfra_host_data(host: Host, inventory: Inventory) -> dict:
    """How pyinfra reaches a host: the inventory's resolved SSH connection."""
    conn = inventory.connection(host)
    data = {"ssh_hostname": conn.address, "ssh_user": conn.user, "ssh_port": conn.port,
            "mailops_host": host, "ssh_strict_host_key_checking": "yes"}
    if conn.key_file:
        data["ssh_key"] = conn.key_file
    if conn.known_hosts:
        data["ssh_known_hosts_file"] = conn.known_hosts
    return data


def _add_operations(state, inventory: Inventory) -> None:
    from pyinfra.api.operation import add_op
    from pyinfra.operations import apt, files, server, systemd

    hosts_file = render("etc/hosts.j2", hosts=inventory.hosts)
    proxy_file = "/etc/apt/apt.conf.d/01mailops-proxy"
    # One call per host and operation, in this order (pyinfra orders
    # operations by where they are added).
    for pyhost in state.inventory.get_active_hosts():
        host: Host = pyhost.data.mailops_host
        add_op(state, server.hostname, name="Set the hostname from the inventory",
               host=pyhost, hostname=host.name)
        # pyinfra's hostname op compares only the running name; a reboot
        # reads /etc/hostname, so that file is managed on its own.
        add_op(state, files.put, name="Persist the hostname in /etc/hostname", host=pyhost,
               src=StringIO(f"{host.name}\n"), dest="/etc/hostname", mode="644")
        add_op(state, files.put, name="Write /etc/hosts with every inventory host",
               host=pyhost, src=StringIO(hosts_file), dest="/etc/hosts", mode="644")
        if host.apt_proxy:
            add_op(state, files.put, name="Point apt at the proxy from the inventory",
                   host=pyhost, src=StringIO(render("etc/apt/apt.conf.d/01mailops-proxy.j2",
                                                    apt_proxy=host.apt_proxy)),
                   dest=proxy_file, mode="644")
        else:
            add_op(state, files.file, name="Remove an apt proxy the inventory no longer sets",
                   host=pyhost, path=proxy_file, present=False)
        add_op(state, apt.packages, name="Install python3, python3-apt and chrony",
               host=pyhost, packages=PACKAGES, update=True, cache_time=24 * 3600,
               no_recommends=True, _retries=2, _timeout=600,
               # One host at a time: apt-cacher-ng races when several hosts make
               # it refresh the same index at once, and apt then hangs.
               _serial=True)
        add_op(state, files.put, name="Configure chrony's time servers", host=pyhost,
               src=StringIO(render("etc/chrony/chrony.conf.j2", ntp_servers=host.ntp_servers)),
               dest="/etc/chrony/chrony.conf", mode="644")
        add_op(state, files.link, name="Set the time zone", host=pyhost,
               path="/etc/localtime", target=f"/usr/share/zoneinfo/{host.timezone}")
        # chrony refuses to run in a container (no CAP_SYS_TIME; the machine's
        # clock is shared), so it is enabled here and started where it can run.
        add_op(state, systemd.service, name="Enable chrony time sync", host=pyhost,
               service="chrony", enabled=True, running=None)


def bootstrap(inventory: Inventory) -> BootstrapResult:
    from pyinfra.api import BaseStateCallback, Config, State
    from pyinfra.api import Inventory as PyInventory
    from pyinfra.api.connect import connect_all, disconnect_all
    from pyinfra.api.operations import run_ops
    from pyinfra.api.state import StateStage

    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)
    names = [(h.name, pyinfra_host_data(h, inventory)) for h in inventory.hosts]
    pyinv = PyInventory((names, {}))
    config = Config(CONNECT_TIMEOUT=10, FAIL_PERCENT=100)
    state = State(check_for_changes=False)

    class Progress(BaseStateCallback):
        @staticmethod
        def host_connect(state, host):
            step("bootstrap", host.name, "connected")

        @staticmethod
        def operation_start(state, op_hash):
            name = ", ".join(sorted(state.get_op_meta(op_hash).names))
            step("bootstrap", "*", name)

        @staticmethod
        def operation_host_error(state, host, op_hash, retry_count=0, max_retries=0):
            step("bootstrap", host.name, "FAILED: "
                 + ", ".join(sorted(state.get_op_meta(op_hash).names)))

    state.init(pyinv, config)
    state.add_callback_handler(Progress())
    state.set_stage(StateStage.Connect)
    connect_all(state)
    state.set_stage(StateStage.Prepare)
    result = BootstrapResult()
    for pyhost in pyinv:
        if pyhost not in state.activated_hosts:
            result.failed.append(pyhost.name)
    _add_operations(state, inventory)
    state.set_stage(StateStage.Execute)
    run_ops(state)
    state.set_stage(StateStage.Disconnect)
    disconnect_all(state)
    for pyhost in pyinv:
        metas = [m.operation_meta for m in state.ops.get(pyhost, {}).values()]
        changed = sum(1 for m in metas if m.is_complete() and m.did_change())
        result.per_host[pyhost.name] = (len(metas), changed)
        if pyhost in state.failed_hosts and pyhost.name not in result.failed:
            result.failed.append(pyhost.name)
    return result
