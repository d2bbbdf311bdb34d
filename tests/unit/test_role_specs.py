"""Every role's meta/argument_specs.yml documents exactly the role's public
variables (those of defaults/main.yml), with the defaults file's literal
values, and the roles use no variable of their own prefix that is neither
public nor internal (`_role__x`). Then the specs are validated for real, on
this machine only (connection local): Ansible validates them before a role's
first task, so a wrong type in a spec would fail a converge."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
ROLE_BASES = [ROOT / "roles", ROOT / "mailops" / "lab" / "roles"]
ROLE_DIRS = {p.name: p for base in ROLE_BASES for p in sorted(base.iterdir()) if p.is_dir()}
ROLES = sorted(ROLE_DIRS)
# Where a role's tasks and templates use its variables (vars/ holds internal ones).
USE_DIRS = ("tasks", "handlers", "templates", "vars")
TYPES = {"str", "list", "dict", "bool", "int", "float", "path", "raw"}
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")
PLAYBOOKS = ROOT / "mailops" / "converge" / "playbooks"
# The hosts site.yml (and its tasks/mail_hosts.yml) gives each role, by group.
SITE_GROUPS = {
    "bind": ["dns"],
    "common": ["mail"],
    "dovecot": ["mail"],
    "external": ["external"],
    "fail2ban": ["lb"],
    "haproxy": ["lb"],
    "keepalived": ["lb"],
    "legacy": ["legacy"],
    "postfix": ["mail"],
    "resolver": ["all"],
    "rspamd": ["mail", "external"],
    "rsyslog": ["mail", "lb"],
    "tls": ["mail"],
}
# One wrong value per role (the others in the same run must still pass):
# role -> (variable, value). A list given for a str is not among them:
# Ansible converts anything to a str ("['a']") instead of refusing it.
WRONG = {
    "bind": ("bind__zones", {"example.test": 1}),  # a mapping for a list
    "haproxy": ("haproxy__maxconn", "lots"),  # a word for an int
    "postfix": ("postfix__proxy_protocol", "perhaps"),  # no boolean
    "tls": ("tls__mode", "acme"),  # outside the choices
}


class _Loader(yaml.SafeLoader):
    """YAML as Ansible writes it: tags such as !unsafe keep their plain value."""


def _tagged(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)


_Loader.add_multi_constructor("!", _tagged)


def load(path: Path) -> Any:
    return yaml.load(path.read_text(), Loader=_Loader)  # noqa: S506 (a SafeLoader)


def defaults(role: str) -> dict[str, Any]:
    return load(ROLE_DIRS[role] / "defaults" / "main.yml") or {}


def public(role: str) -> dict[str, Any]:
    return {k: v for k, v in defaults(role).items() if not k.startswith("_")}


def spec(role: str) -> dict[str, Any]:
    return load(ROLE_DIRS[role] / "meta" / "argument_specs.yml")


def options(role: str) -> dict[str, dict[str, Any]]:
    return spec(role)["argument_specs"]["main"]["options"]


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def has_jinja(value: Any) -> bool:
    if isinstance(value, str):
        return any(mark in value for mark in ("{{", "{%", "{#"))
    if isinstance(value, dict):
        return any(has_jinja(k) or has_jinja(v) for k, v in value.items())
    if isinstance(value, list):
        return any(has_jinja(v) for v in value)
    return False


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (True is not 1, 6 is not 6.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# --- the spec files themselves ------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_spec_exists_and_parses(role):
    path = ROLE_DIRS[role] / "meta" / "argument_specs.yml"
    assert path.is_file(), f"{_shown(path)} is missing"
    data = spec(role)
    assert isinstance(data, dict) and set(data) == {"argument_specs"}, \
        f"{role}: the file holds one key, argument_specs"
    assert set(data["argument_specs"]) == {"main"}, f"{role}: one entry point, main"
    main = data["argument_specs"]["main"]
    for key in ("short_description", "description", "author"):
        assert main.get(key), f"{role}: argument_specs.main.{key} is missing or empty"
    assert isinstance(main.get("options"), dict) and main["options"], f"{role}: no options"


@pytest.mark.parametrize("role", ROLES)
def test_spec_options_are_the_public_defaults(role):
    documented, wanted = set(options(role)), set(public(role))
    missing, extra = sorted(wanted - documented), sorted(documented - wanted)
    assert not missing and not extra, (
        f"{role}: meta/argument_specs.yml and defaults/main.yml disagree;\n"
        f"  in defaults but not in the spec: {missing}\n"
        f"  in the spec but not in defaults: {extra}")
    internal = sorted(n for n in documented if n.startswith("_"))
    assert not internal, f"{role}: internal variables do not belong in the spec: {internal}"


@pytest.mark.parametrize("role", ROLES)
def test_every_option_has_a_description_and_a_type(role):
    problems = []
    for name, opt in options(role).items():
        desc = opt.get("description")
        if not desc or not (isinstance(desc, str) or all(isinstance(d, str) and d
                                                           for d in desc)):
            problems.append(f"{name}: no description")
        if opt.get("type") not in TYPES:
            problems.append(f"{name}: type {opt.get('type')!r} is not one of {sorted(TYPES)}")
        if opt.get("type") == "list" and opt.get("elements") not in TYPES:
            problems.append(f"{name}: a list says the type of its elements")
        if "default" not in opt and "required" not in opt:
            problems.append(f"{name}: neither a default nor required")
        if opt.get("required") and "default" in opt:
            problems.append(f"{name}: required and a default")
        if "choices" in opt and "default" in opt and opt["default"] not in opt["choices"]:
            problems.append(f"{name}: default {opt['default']!r} not in its choices")
    # Ansible templates the spec (the arguments of the validation task it adds).
    if has_jinja(spec(role)):
        problems.append("a template ({{ }}, {% %}, {# #}) in the spec")
    assert not problems, f"{role}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_literal_defaults_equal_the_defaults_file(role):
    values, problems = public(role), []
    for name, opt in options(role).items():
        if name not in values:
            continue  # reported by test_spec_options_are_the_public_defaults
        value = values[name]
        if has_jinja(value):
            if "default" in opt:
                problems.append(f"{name}: the defaults file's value is a template ({value!r}); "
                                "the spec gives no default and says where it comes from")
        elif "default" not in opt:
            problems.append(f"{name}: no default in the spec (defaults file: {value!r})")
        elif not same(opt["default"], value):
            problems.append(f"{name}: spec default {opt['default']!r} != defaults file {value!r}")
    assert not problems, f"{role}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("role", ROLES)
def test_role_uses_only_public_or_internal_variables(role):
    pattern = re.compile(rf"(?<!\w)(_?)({re.escape(role)}__\w+)")
    known = set(public(role)) | set(options(role))
    undocumented: dict[str, list[str]] = {}
    for sub in USE_DIRS:
        for path in sorted((ROLE_DIRS[role] / sub).rglob("*")):
            if not path.is_file():
                continue
            for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
                for internal, name in pattern.findall(line):
                    if not internal and name not in known:
                        undocumented.setdefault(name, []).append(f"{_shown(path)}:{n}")
    assert not undocumented, (
        f"{role}: variables used but neither public (defaults/main.yml and the spec) nor "
        "internal (_" + role + "__x):\n  "
        + "\n  ".join(f"{k}: {', '.join(v)}" for k, v in sorted(undocumented.items())))


# --- handlers ------------------------------------------------------------------


def _handlers(role: str) -> list[dict[str, Any]]:
    path = ROLE_DIRS[role] / "handlers" / "main.yml"
    return (load(path) or []) if path.is_file() else []


def _handler_names(handler: dict[str, Any]) -> set[str]:
    listen = handler.get("listen", [])
    return {handler["name"], *([listen] if isinstance(listen, str) else listen)}


def _notified(role: str) -> list[tuple[str, str]]:
    """(handler name, file) for every notify in the role's tasks, blocks included."""
    out: list[tuple[str, str]] = []

    def walk(tasks: Any, where: str) -> None:
        for task in tasks or []:
            notify = task.get("notify", [])
            out.extend((name, where) for name in ([notify] if isinstance(notify, str) else notify))
            for key in ("block", "rescue", "always"):
                walk(task.get(key), where)

    for path in sorted((ROLE_DIRS[role] / "tasks").rglob("*.yml")):
        walk(load(path), _shown(path))
    return out


def test_handler_names_are_unique_across_the_roles_of_the_play():
    """site.yml converges every role in one play, where a notify runs every
    handler of that name whichever role defined it: a mail node's Postfix
    change once ran the legacy role's reload, which had no retries."""
    owners: dict[str, list[str]] = {}
    for role in SITE_GROUPS:
        for handler in _handlers(role):
            for name in _handler_names(handler):
                owners.setdefault(name, []).append(role)
    shared = {name: roles for name, roles in owners.items() if len(set(roles)) > 1}
    assert not shared, f"handler names defined by more than one role: {shared}"


@pytest.mark.parametrize("role", ROLES)
def test_service_handlers_are_retried(role):
    """systemd in a lab container now and then fails to spawn a reload's or
    a restart's control process (219/CGROUP): every handler that reloads or
    restarts a unit tries again, until it succeeds."""
    bare = []
    for handler in _handlers(role):
        module = handler.get("ansible.builtin.systemd_service") or {}
        if module.get("state") not in ("reloaded", "restarted"):
            continue
        until = str(handler.get("until", ""))
        if not (handler.get("retries", 0) >= 1 and handler.get("register")
                and until == f"{handler['register']} is succeeded"):
            bare.append(handler["name"])
    assert not bare, f"{role}: handlers not retried until they succeed: {bare}"


@pytest.mark.parametrize("role", ROLES)
def test_notify_names_a_handler_of_the_same_role(role):
    own = set().union(*(_handler_names(h) for h in _handlers(role)))
    foreign = [f"{name} ({where})" for name, where in _notified(role) if name not in own]
    assert not foreign, f"{role} notifies handlers it does not define: {foreign}"


# --- the specs validated by Ansible -------------------------------------------


def _spec_arg(role: str) -> str:
    path = ROLE_DIRS[role] / "meta" / "argument_specs.yml"
    spec_yaml = f"lookup('ansible.builtin.file', '{path}') | from_yaml"
    return f"{{{{ ({spec_yaml}).argument_specs.main.options }}}}"


def _provided(role: str) -> dict[str, str]:
    """Every public variable of the role, as its value at run time."""
    return {name: f"{{{{ {name} }}}}" for name in public(role)}


def _validate_task(role: str, when: str | None = None) -> dict[str, Any]:
    task: dict[str, Any] = {
        "name": f"Validate the {role} role's variables against its spec",
        "ansible.builtin.validate_argument_spec": {
            "argument_spec": _spec_arg(role),
            "provided_arguments": _provided(role),
        },
        "register": f"_spec__{role}",
        "ignore_errors": True,
    }
    if when:
        task["when"] = when
    return task


def _write_results(results: Path, roles: list[str]) -> dict[str, Any]:
    mapping = ", ".join(f"'{r}': _spec__{r}" for r in roles)
    return {
        "name": "Write every validation result",
        "ansible.builtin.copy": {
            "content": f"{{{{ {{{mapping}}} | to_json }}}}",
            "dest": f"{results}/{{{{ inventory_hostname }}}}.json",
            "mode": "0644",
        },
    }


def _env(tmp: Path) -> dict[str, str]:
    """The environment without the caller's ANSIBLE_* settings, plus ours."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    (tmp / "ansible.cfg").write_text("")
    collection = tmp / "collections" / "ansible_collections" / "mailops" / "mail"
    if not collection.exists():
        collection.parent.mkdir(parents=True)
        collection.symlink_to(ROOT)
    env.update({
        "ANSIBLE_CONFIG": str(tmp / "ansible.cfg"),
        "ANSIBLE_HOME": str(tmp / "home"),
        "ANSIBLE_COLLECTIONS_PATH": str(tmp / "collections"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "mailops" / "lab" / "roles"),
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCALHOST_WARNING": "False",
        "ANSIBLE_FORKS": "10",
    })
    return env


def _localhost_inventory(tmp: Path) -> Path:
    path = tmp / "hosts.yml"
    path.write_text(yaml.safe_dump({"all": {"hosts": {"localhost": {
        "ansible_connection": "local",
        "ansible_host": "127.0.0.1",
        "ansible_python_interpreter": sys.executable,
    }}}}))
    return path


def _run(tmp: Path, playbook: list[dict], inventory: Path,
         *args: str) -> subprocess.CompletedProcess:
    path = tmp / f"playbook-{len(list(tmp.glob('playbook-*.yml')))}.yml"
    path.write_text(yaml.safe_dump(playbook, sort_keys=False, width=1000))
    return subprocess.run(
        [str(ANSIBLE_PLAYBOOK), "-i", str(inventory), str(path), *args],
        capture_output=True, text=True, timeout=300, cwd=tmp, env=_env(tmp),
        stdin=subprocess.DEVNULL)


def _defaults_run(tmp: Path, *args: str) -> dict[str, dict[str, Any]]:
    """Each role's defaults loaded with include_vars, then validated against its spec."""
    results = tmp / "results"
    results.mkdir()
    tasks: list[dict[str, Any]] = []
    for role in ROLES:
        tasks.append({"name": f"Load the {role} role's defaults",
                      "ansible.builtin.include_vars": {
                          "file": str(ROLE_DIRS[role] / "defaults" / "main.yml")}})
        tasks.append(_validate_task(role))
    tasks.append(_write_results(results, ROLES))
    play = {"name": "Role specs", "hosts": "localhost", "gather_facts": False, "tasks": tasks}
    res = _run(tmp, [play], _localhost_inventory(tmp), *args)
    assert res.returncode == 0, f"ansible-playbook failed:\n{res.stdout}\n{res.stderr}"
    return json.loads((results / "localhost.json").read_text())


@pytest.fixture(scope="module")
def defaults_validated(tmp_path_factory) -> dict[str, dict[str, Any]]:
    return _defaults_run(tmp_path_factory.mktemp("specs"))


@pytest.fixture(scope="module")
def wrong_validated(tmp_path_factory) -> dict[str, dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("wrong")
    extra = tmp / "wrong.json"
    extra.write_text(json.dumps({name: value for name, value in WRONG.values()}))
    return _defaults_run(tmp, "-e", f"@{extra}")


def _failure(result: dict[str, Any]) -> str:
    return json.dumps({k: result.get(k) for k in ("msg", "argument_errors")}, indent=1)


@pytest.mark.parametrize("role", ROLES)
def test_defaults_pass_the_spec(role, defaults_validated):
    result = defaults_validated[role]
    assert not result.get("failed") and not result.get("skipped"), \
        f"{role}: its defaults fail its spec:\n{_failure(result)}"
    assert result.get("msg") == "The arg spec validation passed", result


@pytest.mark.parametrize("role", sorted(WRONG))
def test_a_wrong_type_fails_naming_the_variable(role, wrong_validated):
    name, value = WRONG[role]
    result = wrong_validated[role]
    assert result.get("failed"), f"{role}: {name}={value!r} passed its spec"
    errors = result.get("argument_errors") or []
    assert any(name in e for e in errors), f"{role}: no error names {name}:\n{_failure(result)}"
    assert all(name in e for e in errors), f"{role}: errors beyond {name}:\n{_failure(result)}"
    # The other roles' values are untouched and still pass in the same run.
    for other in sorted(set(ROLES) - set(WRONG)):
        assert not wrong_validated[other].get("failed"), \
            f"{other}: {_failure(wrong_validated[other])}"


@pytest.mark.parametrize("inventory", ["lab", "example"])
def test_site_values_pass_the_specs(inventory, tmp_path):
    """What the site playbook gives the roles (role defaults, then
    vars/model.yml and vars/dns.yml over the inventory and mailops_site) passes
    every spec on every host the role runs on."""
    from mailops.inventory.model import load_inventory
    from mailops.site import ansible_vars
    from mailops.site.mailmodel import load_mail_model

    inv = load_inventory(ROOT / "inventories" / inventory)
    site = ansible_vars.write(inv, load_mail_model(inv), tmp_path / "site.json")
    results = tmp_path / "results"
    results.mkdir()
    tasks = []
    for role in ROLES:
        groups = " + ".join(f"(groups['{g}'] | default([]))" for g in SITE_GROUPS[role])
        tasks.append(_validate_task(role, when=f"inventory_hostname in {groups}"))
    tasks.append(_write_results(results, ROLES))
    play = {
        "name": "Site values against the role specs",
        "hosts": "all",
        "gather_facts": False,
        # As in site.yml: role defaults below the model mapping (render.yml does the same).
        "vars_files": [str(ROLE_DIRS[r] / "defaults" / "main.yml") for r in ROLES]
        + [str(PLAYBOOKS / "vars" / "model.yml"), str(PLAYBOOKS / "vars" / "dns.yml")],
        "tasks": tasks,
    }
    # Nothing leaves this machine: every host is run locally (and no task connects).
    local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
    # After `deploy.py up` the lab's inventory has its vault.
    vault = ["--vault-password-file", str(inv.vault_password_file)] \
        if inv.vault_password_file.exists() else []
    res = _run(tmp_path, [play], ROOT / "inventories" / inventory,
               "-e", f"@{site}", "-e", json.dumps(local), *vault)
    assert res.returncode == 0, f"ansible-playbook failed:\n{res.stdout}\n{res.stderr}"
    validated: set[str] = set()
    failures = []
    for host in inv.hosts:
        for role, result in json.loads((results / f"{host.name}.json").read_text()).items():
            if result.get("failed"):
                failures.append(f"{host.name} {role}: {_failure(result)}")
            elif not result.get("skipped"):
                validated.add(role)
    assert not failures, "\n".join(failures)
    groups = {g for h in inv.hosts for g in h.groups} | {"all"}
    applied = {r for r, gs in SITE_GROUPS.items() if set(gs) & groups}
    assert validated == applied, f"validated {sorted(validated)}, expected {sorted(applied)}"


def test_roles_validate_their_own_spec_when_they_run(tmp_path):
    """The check Ansible itself adds as a role's first task (tagged always):
    the roles imported as in a converge, run with a tag no other task has."""
    plays = [{
        "name": "Every role, validation only",
        "hosts": "localhost",
        "gather_facts": False,
        "tasks": [{"name": f"Role {role}", "ansible.builtin.import_role": {
            "name": role if ROLE_DIRS[role].parent != ROOT / "roles" else f"mailops.mail.{role}"}}
            for role in ROLES],
    }]
    inventory = _localhost_inventory(tmp_path)
    res = _run(tmp_path, plays, inventory, "--tags", "mailops-spec-validation-only")
    out = res.stdout + res.stderr
    assert res.returncode == 0, f"ansible-playbook failed:\n{out}"
    assert out.count("Validating arguments against arg spec 'main'") == len(ROLES), out
    assert re.search(r"localhost\s*:\s*ok=\d+\s+changed=0\s+unreachable=0\s+failed=0", out), out
    name, value = WRONG["haproxy"]
    res = _run(tmp_path, plays, inventory, "--tags", "mailops-spec-validation-only",
               "-e", json.dumps({name: value}))
    out = res.stdout + res.stderr
    assert res.returncode != 0 and "Validation of arguments failed" in out and name in out, out
