"""The package's layout is its data flow: each stage imports only from the
stages before it, no module imports a private name from another, and there
is no import cycle (a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "mailops"
# Stage -> the stages it may import from (itself included).
ORDER = ["core", "inventory", "site", "secrets", "converge", "dns", "verify"]
ALLOWED = {stage: set(ORDER[: i + 1]) for i, stage in enumerate(ORDER)}
ALLOWED["lab"] = {"core", "inventory", "lab"}
ALLOWED["workflows"] = {*ORDER, "lab", "workflows"}
ALLOWED["ops"] = {*ORDER, "ops"}
ALLOWED["cli"] = {*ALLOWED["workflows"], "ops", "cli"}
SKIP: set[str] = set()  # every module of the package is checked


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        if SKIP & set(rel.parts):
            continue
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def imports(path: Path) -> list[tuple[str, list[str], int]]:
    """(module, imported names, line) for every mailops import in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "mailops":
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names
                      if a.name.split(".")[0] == "mailops"]
    return found


def stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cli"


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, names, _ in imports(path):
            # `from mailops.verify import dns` imports the module mailops.verify.dns.
            subs = {f"{target}.{n}" for n in names if f"{target}.{n}" in mods}
            for dep in subs or {target}:
                if dep in mods and dep != mod:
                    edges[mod].add(dep)
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_imports():
    for mod in modules():
        importlib.import_module(mod)


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_each_stage_imports_only_earlier_stages():
    wrong = []
    for mod, path in modules().items():
        if mod == "mailops":
            continue
        for target, _, line in imports(path):
            if stage(target) not in ALLOWED[stage(mod)]:
                wrong.append(f"{path.relative_to(ROOT)}:{line}: {mod} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_is_imported_across_modules():
    wrong = [f"{path.relative_to(ROOT)}:{line}: {name} from {target}"
             for mod, path in modules().items() for target, names, line in imports(path)
             for name in names if name.startswith("_")]
    assert not wrong, "\n".join(wrong)


def test_each_subpackage_says_what_it_owns_and_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        if init.parent.name in SKIP:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and len(doc.splitlines()) >= 2, init


def test_the_collection_plugins_do_not_import_mailops():
    """Modules run on the hosts and plugins in Ansible's own process, where
    the mailops package is not installed."""
    wrong = [f"{path.relative_to(ROOT)}:{line}: {target}"
             for path in sorted((ROOT / "plugins").rglob("*.py"))
             for target, _, line in imports(path)]
    assert not wrong, "\n".join(wrong)
