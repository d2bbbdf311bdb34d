"""Inventory -> typed model.

The inventory is read through ansible-core's own inventory API, so Ansible
and mailops see the same hosts and variables. Before that, the raw YAML of
hosts.yml is walked once for what Ansible would silently accept (a key given
twice) and to know where each host was written, so every error can name the
file, the key path and the fix. What each host takes is declared once, in
HOST_FIELDS (and the lab's all.vars.mailops_lab in LAB_FIELDS), checked by
mailops.inventory.fields. All problems are collected and reported together,
before any host is touched.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import yaml

from mailops.core import ansible_env  # noqa: F401  (must precede ansible imports)
from mailops.core.errors import InventoryError, InventoryErrors
from mailops.core.paths import lab_known_hosts, lab_ssh_key, vault_password_file
from mailops.inventory.fields import (
    Field,
    Locate,
    Validator,
    brief,
    in_range,
    matches,
    type_name,
    validate,
)

GROUPS = ("lb", "mail", "dns", "external", "legacy")
LAB_RANGE = IPv4Network("198.18.0.0/15")
HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$")
LAB_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")


@dataclass(frozen=True)
class Host:
    name: str
    groups: tuple[str, ...]
    address: IPv4Address
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None
    apt_proxy: str | None = None
    timezone: str = "Etc/UTC"
    ntp_servers: tuple[str, ...] = ()


@dataclass(frozen=True)
class Connection:
    """How mailops and Ansible reach a host over SSH: strict host key
    checking, no prompts."""

    address: str
    port: int
    user: str
    key_file: str | None
    known_hosts: str | None  # None: ssh's own (~/.ssh/known_hosts)

    def ssh_argv(self) -> list[str]:
        argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                "-o", "StrictHostKeyChecking=yes", "-p", str(self.port), "-l", self.user]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.key_file:
            argv += ["-i", self.key_file]
        return [*argv, self.address]


@dataclass(frozen=True)
class LabSpec:
    """A lab: hosts booted on this machine, on their own bridge and subnet."""

    name: str
    subnet: IPv4Network

    @property
    def gateway(self) -> IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge(self) -> str:
        return f"{self.name}0"

    @property
    def apt_proxy_url(self) -> str:
        return f"http://{self.gateway}:3142"

    def netns(self, host: Host) -> str:
        return f"{self.name}-{host.name}"

    def veth(self, host: Host) -> str:
        # Interface names are limited to 15 characters: lab name + last octet.
        return f"{self.name}-{int(host.address) & 0xFF}"


@dataclass(frozen=True)
class Inventory:
    path: Path
    hosts: tuple[Host, ...]
    lab: LabSpec | None = None
    # Per-host variables as Ansible resolves them, vault_* left out so they
    # can never end up in a report.
    variables: dict[str, dict[str, Any]] = field(default_factory=dict, compare=False)
    vault_password_file: Path | None = None
    # mailops_ssh_known_hosts_file: where the hosts' SSH keys are recorded
    # (a lab records its own); None: ssh's default.
    known_hosts: str | None = None
    # The balancers' floating address (mailops_floating_address, VRRP):
    # where clients and the MX reach the service when there are several.
    floating_address: IPv4Address | None = None

    def connection(self, host: Host) -> Connection:
        """The one place that says how a host is reached; a lab's hosts by
        the key and known_hosts file the lab made for them."""
        key, known = host.ssh_key, self.known_hosts
        if self.lab is not None:
            key = key or str(lab_ssh_key(self.lab.name))
            known = known or str(lab_known_hosts(self.lab.name))
        return Connection(str(host.address), host.ssh_port, host.ssh_user, key, known)

    def ansible_ssh_env(self) -> dict[str, str]:
        """The same, for Ansible: the key and known_hosts file that are not
        already in the inventory (ansible_ssh_private_key_file)."""
        env = {}
        conns = [self.connection(h) for h in self.hosts]
        known = {c.known_hosts for c in conns if c.known_hosts}
        if known:
            env["ANSIBLE_SSH_COMMON_ARGS"] = " ".join(
                f"-o UserKnownHostsFile={k}" for k in sorted(known)) + \
                " -o StrictHostKeyChecking=yes"
        if self.lab is not None:
            env["ANSIBLE_PRIVATE_KEY_FILE"] = str(lab_ssh_key(self.lab.name))
        return env

    def group(self, name: str) -> tuple[Host, ...]:
        return tuple(h for h in self.hosts if name in h.groups)

    def host(self, name: str) -> Host:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(name)

    def site_vars(self) -> dict[str, Any]:
        """Site data (group_vars/all) as Ansible resolves it: every host sees
        it; read where the mail model is, on the first mail node."""
        mail = self.group("mail")
        return self.variables.get(mail[0].name, {}) if mail else {}

    def defined_in(self, key: str, default_file: str) -> Path:
        """The group_vars file that sets key (for error messages), else the
        file of group_vars/all where it belongs."""
        gv = self.path / "group_vars"
        for file in sorted(gv.rglob("*.yml")) if gv.exists() else []:
            try:
                text = file.read_text()
                data = {} if text.startswith("$ANSIBLE_VAULT") else yaml.safe_load(text)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and key in data:
                return file
        return gv / "all" / default_file


# ---------------------------------------------------------------- raw YAML pass


@dataclass
class _Raw:
    """Where each host and group was written in hosts.yml."""

    host_keys: dict[str, str] = field(default_factory=dict)  # host -> key path
    group_keys: dict[str, str] = field(default_factory=dict)
    # (host or group, variable) -> key path of the variable in hosts.yml
    host_vars: dict[tuple[str, str], str] = field(default_factory=dict)
    group_vars: dict[tuple[str, str], str] = field(default_factory=dict)


def _check_duplicates(node: yaml.Node, path: str, file: Path, errors: list[InventoryError]):
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                errors.append(InventoryError(
                    file, f"{path}.{key}" if path else key,
                    f"given twice (lines {seen[key]} and {line}); YAML keeps only the last",
                    "remove or rename one of them: each host and key appears once per mapping",
                ))
            seen[key] = line
            _check_duplicates(value_node, f"{path}.{key}" if path else key, file, errors)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, f"{path}[{i}]", file, errors)


def _walk_groups(name: str, body: Any, path: str, raw: _Raw, file: Path,
                 errors: list[InventoryError]) -> None:
    raw.group_keys.setdefault(name, path)
    if body is None:
        return
    if not isinstance(body, dict):
        errors.append(InventoryError(file, path, f"a group must be a mapping, not "
                                     f"{type_name(body)}",
                                     "write the group as `name: {hosts: {...}, vars: {...}}`"))
        return
    group_vars = body.get("vars")
    for var in group_vars if isinstance(group_vars, dict) else ():
        raw.group_vars.setdefault((name, str(var)), f"{path}.vars.{var}")
    hosts = body.get("hosts") or {}
    if isinstance(hosts, dict):
        for host, host_body in hosts.items():
            raw.host_keys.setdefault(str(host), f"{path}.hosts.{host}")
            for var in host_body if isinstance(host_body, dict) else ():
                raw.host_vars.setdefault((str(host), str(var)), f"{path}.hosts.{host}.{var}")
    else:
        errors.append(InventoryError(file, f"{path}.hosts",
                                     f"must be a mapping of host names, not {type_name(hosts)}",
                                     "write hosts as `hosts: {mail1: {ansible_host: ...}}`"))
    children = body.get("children") or {}
    if isinstance(children, dict):
        for child, child_body in children.items():
            _walk_groups(str(child), child_body, f"{path}.children.{child}", raw, file, errors)


def _raw_pass(file: Path, errors: list[InventoryError]) -> tuple[_Raw, dict]:
    raw = _Raw()
    try:
        text = file.read_text()
    except OSError as exc:
        raise InventoryErrors([InventoryError(
            file, "(file)", f"cannot be read: {exc.strerror}",
            "pass -i with an inventory folder that holds hosts.yml")]) from exc
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        raise InventoryErrors([InventoryError(
            file, where, f"is not valid YAML: {getattr(exc, 'problem', exc)}",
            "fix the YAML syntax (indentation with spaces, `key: value`)")]) from exc
    if node is not None:
        _check_duplicates(node, "", file, errors)
    if not isinstance(data, dict) or "all" not in data:
        raise InventoryErrors([InventoryError(
            file, "all", "missing: an Ansible YAML inventory starts with `all:`",
            "put the groups under `all: {children: {lb: ..., mail: ...}}`")])
    _walk_groups("all", data["all"], "all", raw, file, errors)
    return raw, data


# ---------------------------------------------------------------- validation

# Where a host setting belongs in hosts.yml (Field.where).
HOST_ENTRY = "all.children.<group>.hosts.<host>"
ALL_VARS = "all.vars"


def _ipv4_problem(value: str) -> str | None:
    try:
        IPv4Address(value)
    except ValueError:
        return f"{brief(value)} is not an IPv4 address"
    return None


def _lab_subnet_problem(value: str) -> str | None:
    try:
        net = IPv4Network(value)
    except ValueError:
        return f"{brief(value)} is not a CIDR network"
    if not net.subnet_of(LAB_RANGE) or net.prefixlen > 28:
        return f"{value} is outside the lab range {LAB_RANGE} or too small"
    return None


# all.vars.mailops_lab, read from hosts.yml itself: the hosts' checks need it.
LAB_FIELDS = (
    Field("mailops_lab", dict, ALL_VARS, default=None, wrong_type="must be a mapping, not {got}",
          fix="write `mailops_lab: {name: mailops, subnet: 198.18.0.0/24}`",
          convert=lambda spec: LabSpec(**spec), fields=(
              Field("name", str, f"{ALL_VARS}.mailops_lab",
                    wrong_type="{value} is not a valid lab name",
                    check=matches(LAB_NAME_RE, "{value} is not a valid lab name"),
                    fix="use a lowercase letter then letters/digits, at most 10 characters, "
                        "e.g. `name: mailops` (it prefixes interface names, which Linux "
                        "limits to 15)"),
              Field("subnet", str, f"{ALL_VARS}.mailops_lab", check=_lab_subnet_problem,
                    convert=IPv4Network,
                    wrong_type="must be a string like 198.18.0.0/24, not {got}",
                    fix=f"write a /24 inside {LAB_RANGE} in CIDR form, host bits zero, e.g. "
                        "`subnet: 198.18.0.0/24` (lab traffic must stay in that range)"))),
)

# Per host, as Ansible resolves its variables.
HOST_FIELDS = (
    Field("ansible_host", str, HOST_ENTRY, check=_ipv4_problem, convert=IPv4Address,
          wrong_type="must be an IPv4 address string, not {got}",
          fix="give the host's IPv4 address, e.g. `ansible_host: 198.18.0.11`"),
    Field("ansible_port", int, HOST_ENTRY, default=22,
          wrong_type="{value} is not a TCP port number",
          check=in_range(1, 65535, "{value} is not a TCP port number"),
          fix="write a number from 1 to 65535, e.g. `ansible_port: 22`"),
    Field("ansible_user", str, ALL_VARS, default="root", wrong_type="must be a string, not {got}",
          fix="write the SSH login name, e.g. `ansible_user: root`"),
    Field("ansible_ssh_private_key_file", str, HOST_ENTRY, default=None,
          fix="give the path of the SSH private key, or leave it out (a lab uses its own)"),
    Field("mailops_apt_proxy", str, ALL_VARS, default=None,
          wrong_type="{value} is not an http:// URL",
          check=matches(re.compile(r"^http://"), "{value} is not an http:// URL"),
          fix="write it like `mailops_apt_proxy: http://198.18.0.1:3142`"),
    Field("mailops_ntp_servers", list, ALL_VARS, default=(), convert=tuple,
          wrong_type="must be a list of server names, not {got}",
          each=Field("server", str, wrong_type="{value} is not a server name",
                     fix="write `mailops_ntp_servers: [ntp1.example.net]` or []"),
          fix="write `mailops_ntp_servers: [ntp1.example.net]` or []"),
    Field("mailops_timezone", str, ALL_VARS, default="Etc/UTC",
          fix="write a tz database name, e.g. `mailops_timezone: Europe/Berlin`"),
)


def _lab_spec(data: dict, file: Path, errors: list[InventoryError]) -> LabSpec | None:
    body = data.get("all")
    all_vars = body.get("vars") if isinstance(body, dict) else None
    values, problems = validate(all_vars, LAB_FIELDS, lambda f: (file, f"{ALL_VARS}.{f.key}"))
    errors += problems
    return values.get("mailops_lab")


def _vars_file(folder: Path, names: tuple[str, ...], key: str) -> Path | None:
    """The file of group_vars/ or host_vars/ (for one of names) that sets key."""
    for name in names:
        for file in [folder / f"{name}.yml", folder / f"{name}.yaml",
                     *sorted((folder / name).glob("*.y*ml"))]:
            try:
                text = file.read_text() if file.is_file() else ""
                data = {} if text.startswith("$ANSIBLE_VAULT") else yaml.safe_load(text)
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict) and key in data:
                return file
    return None


def _host_locate(raw: _Raw, name: str, groups: tuple[str, ...], keypath: str,
                 file: Path) -> Locate:
    """Where a host's variable was written, the source Ansible takes it from
    first (host over group over all), so an error points at the line to fix;
    one not written anywhere is reported where it belongs."""
    inv_dir = file.parent

    def locate(f: Field) -> tuple[Path, str]:
        key = f.key
        if found := _vars_file(inv_dir / "host_vars", (name,), key):
            return found, key
        if (name, key) in raw.host_vars:
            return file, raw.host_vars[name, key]
        if found := _vars_file(inv_dir / "group_vars", groups, key):
            return found, key
        for group in groups:
            if (group, key) in raw.group_vars:
                return file, raw.group_vars[group, key]
        if found := _vars_file(inv_dir / "group_vars", ("all",), key):
            return found, key
        if ("all", key) in raw.group_vars or f.where == ALL_VARS:
            return file, f"{ALL_VARS}.{key}"
        return file, f"{keypath}.{key}"

    return locate


def _host_from_vars(name: str, groups: tuple[str, ...], hv: dict, keypath: str, file: Path,
                    lab: LabSpec | None, errors: list[InventoryError], raw: _Raw) -> Host | None:
    check = Validator(HOST_FIELDS, _host_locate(raw, name, groups, keypath, file))
    if not HOSTNAME_RE.match(name):
        check.errors.append(InventoryError(
            file, keypath, f"host name {name!r} is not a valid hostname",
            "use lowercase letters, digits and '-', at most 32 characters"))
    values = check.run(hv)
    address = values.get("ansible_host")
    if address is not None and lab is not None:
        fix = f"pick a free address in {lab.subnet} from .10 up"
        if address not in lab.subnet:
            check.add("ansible_host", f"{address} is outside the lab subnet {lab.subnet}", fix)
        elif address in (lab.gateway, lab.subnet.network_address, lab.subnet.broadcast_address):
            check.add("ansible_host", f"{address} is reserved (network, broadcast or the "
                      "machine's own lab address)", fix)
    # A setting made once for every host (all.vars) is reported once.
    seen = {(e.file, e.key, e.problem) for e in errors}
    errors += [e for e in check.errors if (e.file, e.key, e.problem) not in seen]
    if check.errors:
        return None
    return Host(
        name=name, groups=groups, address=address, ssh_user=values["ansible_user"],
        ssh_port=values["ansible_port"], ssh_key=values["ansible_ssh_private_key_file"],
        apt_proxy=values["mailops_apt_proxy"], timezone=values["mailops_timezone"],
        ntp_servers=values["mailops_ntp_servers"],
    )


def load_inventory(path: Path | str) -> Inventory:
    """Read and validate an inventory folder (or a hosts.yml file)."""
    path = Path(path)
    file = path / "hosts.yml" if path.is_dir() else path
    if not file.exists():
        raise InventoryErrors([InventoryError(
            file, "(file)", "does not exist",
            "pass -i with an inventory folder that holds hosts.yml, e.g. -i inventories/lab")])
    errors: list[InventoryError] = []
    raw, data = _raw_pass(file, errors)
    lab = _lab_spec(data, file, errors)

    from ansible.errors import AnsibleError
    from ansible.inventory.manager import InventoryManager
    from ansible.parsing.dataloader import DataLoader
    from ansible.plugins.vars import host_group_vars
    from ansible.vars.manager import VariableManager

    # Ansible remembers which vars files a folder holds for the life of the
    # process; a file written since (migrate.yml) would not be read.
    host_group_vars.FOUND.clear()
    loader = DataLoader()
    inv_dir = file.parent
    password_file = vault_password_file(inv_dir, lab.name if lab else None)
    encrypted = [f for f in sorted((inv_dir / "group_vars").rglob("*.yml"))
                 if f.read_bytes().startswith(b"$ANSIBLE_VAULT")] \
        if (inv_dir / "group_vars").exists() else []
    if encrypted:
        if not password_file.exists():
            errors.append(InventoryError(
                encrypted[0], "(file)",
                f"is encrypted, and the vault password file {password_file} does not exist",
                "set MAILOPS_VAULT_PASSWORD_FILE to the file holding this vault's password "
                "(a lab makes its own; delete a lab vault to start its secrets afresh)"))
            raise InventoryErrors(errors)
        from ansible.parsing.vault import get_file_vault_secret

        secret = get_file_vault_secret(str(password_file), vault_id="default", loader=loader)
        secret.load()
        loader.set_vault_secrets([("default", secret)])
    try:
        inv = InventoryManager(loader=loader, sources=[str(file.parent if path.is_dir() else file)])
    except AnsibleError as exc:
        errors.append(InventoryError(file, "(file)", f"Ansible cannot parse it: {exc.message}",
                                     "compare with inventories/lab/hosts.yml"))
        raise InventoryErrors(errors) from exc
    varman = VariableManager(loader=loader, inventory=inv)

    for gname in sorted(inv.groups):
        if gname in ("all", "ungrouped") or gname in GROUPS:
            continue
        errors.append(InventoryError(
            file, raw.group_keys.get(gname, f"group {gname}"), f"unknown group {gname!r}",
            f"use only the groups {', '.join(GROUPS)} (a host may be in several)"))

    hosts: list[Host] = []
    by_address: dict[IPv4Address, str] = {}
    variables: dict[str, dict[str, Any]] = {}
    floating: dict[str, Any] = {}  # balancer -> its mailops_floating_address
    for ahost in sorted(inv.get_hosts(), key=lambda h: h.name):
        name = ahost.name
        keypath = raw.host_keys.get(name, f"host {name}")
        groups = tuple(sorted(g.name for g in ahost.get_groups()
                              if g.name not in ("all", "ungrouped")))
        if not any(g in GROUPS for g in groups):
            errors.append(InventoryError(
                file, keypath, f"host {name!r} is in none of the groups {', '.join(GROUPS)}",
                "move it under `all.children.<group>.hosts`"))
            continue
        hv = varman.get_vars(host=ahost, include_hostvars=False)
        host = _host_from_vars(name, groups, hv, keypath, file, lab, errors, raw)
        if host is None:
            continue
        if host.address in by_address:
            errors.append(InventoryError(
                file, f"{keypath}.ansible_host",
                f"{host.address} is already the address of {by_address[host.address]}",
                "give every host its own address"))
            continue
        by_address[host.address] = name
        hosts.append(host)
        if "lb" in groups:
            floating[name] = hv.get("mailops_floating_address")
        variables[name] = {k: v for k, v in hv.items()
                           if not k.startswith(("ansible_", "inventory_", "group_names",
                                                "groups", "omit", "playbook_dir", "vault_"))}
    if not any("mail" in h.groups for h in hosts) and not any(
            e.key.startswith(raw.group_keys.get("mail", "~")) for e in errors):
        errors.append(InventoryError(
            file, raw.group_keys.get("mail", "all.children.mail"),
            "no host in group 'mail' (at least one mail node is required)",
            "add `mail: {hosts: {mail1: {ansible_host: ...}}}` under all.children"))
    mail = [h.name for h in hosts if "mail" in h.groups]
    if len(mail) > 1 and len(mail) % 2:
        errors.append(InventoryError(
            file, raw.group_keys.get("mail", "all.children.mail"),
            f"{len(mail)} mail nodes: they replicate in pairs in inventory order (1st with "
            f"2nd, 3rd with 4th, ...), so {mail[-1]} has no pair",
            f"add one more mail node after {mail[-1]}, or remove {mail[-1]}"))
    vip = _floating_address(floating, by_address, lab, file, raw, errors)
    if errors:
        raise InventoryErrors(errors)
    known = (data.get("all") or {}).get("vars", {}) or {}
    known = known.get("mailops_ssh_known_hosts_file")
    known = os.path.expanduser(known) if isinstance(known, str) else None
    return Inventory(path=inv_dir, hosts=tuple(hosts), lab=lab, variables=variables,
                     vault_password_file=password_file, known_hosts=known,
                     floating_address=vip)


def _floating_address(given: dict[str, Any], by_address: dict[IPv4Address, str],
                      lab: LabSpec | None, file: Path, raw: _Raw,
                      errors: list[InventoryError]) -> IPv4Address | None:
    """The balancers' one floating address: required with two or more
    balancers (clients and the MX need one address that outlives either),
    the same for all of them, free, and in the lab's subnet for a lab."""
    key = f"{raw.group_keys.get('lb', 'all.children.lb')}.vars.mailops_floating_address"
    example = "`lb: {vars: {mailops_floating_address: 198.18.0.9}, hosts: ...}`"
    values = {str(v) for v in given.values() if v is not None}
    if not values:
        if len(given) > 1:
            errors.append(InventoryError(
                file, key, f"missing: {len(given)} balancers need one floating address "
                "for clients and the MX", f"add a free address of their subnet, {example}"))
        return None
    if len(values) > 1 or None in given.values():
        errors.append(InventoryError(file, key, "differs between the balancers "
                                     f"({', '.join(sorted(values))})",
                                     f"set it once, for the group: {example}"))
        return None
    value = values.pop()
    if len(given) < 2:
        errors.append(InventoryError(file, key, "a floating address needs two or more "
                                     "balancers to move between",
                                     "add a second host to the lb group, or remove the key"))
        return None
    if problem := _ipv4_problem(value):
        errors.append(InventoryError(file, key, problem, f"write an IPv4 address, {example}"))
        return None
    address = IPv4Address(value)
    if address in by_address:
        errors.append(InventoryError(file, key, f"{address} is the address of "
                                     f"{by_address[address]}",
                                     "pick an address no host has: keepalived adds it"))
        return None
    if lab is not None and (address not in lab.subnet or address in (
            lab.gateway, lab.subnet.network_address, lab.subnet.broadcast_address)):
        errors.append(InventoryError(file, key, f"{address} is not a free address of the lab "
                                     f"subnet {lab.subnet}",
                                     f"pick one in {lab.subnet} that no host has, e.g. .9"))
        return None
    return address
