"""Declarative validation of site input: a Field says what one setting takes
(its type, a default or that it is required, a check, the fix, where it
belongs), and a Validator turns raw values (YAML as Ansible resolved it) into
checked values plus every problem found, each an InventoryError naming the
file, the key path and the fix. Bad input is reported, never raised.

This module owns the machinery only; each table lives with the model it
builds: HOST_FIELDS and LAB_FIELDS in mailops.inventory.model, MAIL_FIELDS in
mailops.site.mailmodel, DNS_FIELDS in mailops.dns.settings.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailops.core.errors import InventoryError

Check = Callable[[Any], "str | None"]  # the problem, or None when the value is good
# Where a field's problems are reported: (file, key path of the field).
Locate = Callable[["Field"], "tuple[Path | str, str]"]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # the default of a field that must be given
_ABSENT = object()
_FAILED = object()

_NAMES = {str: "a string", int: "a whole number", float: "a number", bool: "true/false",
          list: "a list", dict: "a mapping", type(None): "empty"}


def type_name(value: Any) -> str:
    """What a YAML value is, in the words of the error messages."""
    return _NAMES.get(type(value), type(value).__name__)


def brief(value: Any, limit: int = 40) -> str:
    """repr of a value short enough for one error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _types(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


def _is(value: Any, types: type | tuple[type, ...]) -> bool:
    types = _types(types)
    # YAML true/false are Python bools, and bool is a subclass of int: a
    # number field must not take `true` as 1.
    if isinstance(value, bool):
        return bool in types
    return isinstance(value, types)


def _wanted(types: type | tuple[type, ...]) -> str:
    types = _types(types)
    if float in types:  # "a number" covers whole numbers too
        types = tuple(t for t in types if t is not int)
    return " or ".join(_NAMES.get(t, t.__name__) for t in types)


@dataclass(frozen=True)
class Field:
    """One setting. `where` is the group_vars/all file it belongs in (mail.yml,
    dns.yml) or, for host settings, its key path in hosts.yml. A key given
    with no value (YAML `key:`) counts as not given."""

    key: str
    types: type | tuple[type, ...]
    where: str = ""
    fix: str = ""
    default: Any = REQUIRED
    check: Check | None = None  # runs only on a value of the right type
    convert: Callable[[Any], Any] | None = None  # to the typed value, once all passed
    # The problem for a value of the wrong type; {value} (its short repr),
    # {got} and {want} are filled in.
    wrong_type: str = "has the wrong type: {value} is {got}, where {want} is expected"
    each: Field | None = None  # every item of a list, or value of a mapping
    fields: tuple[Field, ...] = ()  # a mapping with exactly these keys

    def __post_init__(self) -> None:
        # A wrong table is a bug in mailops, not in the site: fail loudly.
        if self.fields and _types(self.types) != (dict,):
            raise TypeError(f"{self.key}: nested fields need types=dict")
        if self.each is not None and not set(_types(self.types)) <= {list, dict}:
            raise TypeError(f"{self.key}: each needs types list and/or dict")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def walk(self) -> Iterable[Field]:
        """This field and every field nested in it."""
        yield self
        for sub in (*self.fields, *([self.each] if self.each else [])):
            yield from sub.walk()


# ---------------------------------------------------------------- common checks


def holds(predicate: Callable[[Any], Any], problem: str) -> Check:
    """A check from a predicate; problem may name {value}."""
    return lambda v: None if predicate(v) else problem.format(value=brief(v))


def one_of(choices: Sequence[Any], problem: str) -> Check:
    return lambda v: None if v in choices else problem.format(value=brief(v))


def matches(pattern: re.Pattern[str], problem: str) -> Check:
    return lambda v: None if pattern.match(v) else problem.format(value=brief(v))


def in_range(low: float, high: float, problem: str) -> Check:
    return lambda v: None if low <= v <= high else problem.format(value=brief(v))


def in_group_vars(defined_in: Callable[[str, str], Path]) -> Locate:
    """Locate for site settings: the group_vars file that sets the key, else
    the file of group_vars/all it belongs in (Inventory.defined_in)."""
    return lambda f: (defined_in(f.key, f.where), f.key)


# ---------------------------------------------------------------- the validator


class Validator:
    """One pass over one table: run() checks the values, add() lets the
    rules that span fields report in the same form, errors holds it all."""

    def __init__(self, fields: Sequence[Field], locate: Locate | None = None) -> None:
        self.fields = {f.key: f for f in fields}
        self.locate = locate or (lambda f: (f.where, f.key))
        self.errors: list[InventoryError] = []

    def add(self, key: str, problem: str, fix: str | None = None) -> None:
        """Report a problem at a key path that starts with a field's key
        (`mailops_mailboxes[2].quota`); fix defaults to the field's."""
        root = re.match(r"[^.\[]*", key)[0]
        field = self.fields[root]
        file, path = self.locate(field)
        self.errors.append(InventoryError(file, path + key[len(root):], problem,
                                          field.fix if fix is None else fix))

    def run(self, values: Any) -> dict[str, Any]:
        """The checked values: each field that passed (converted) or was not
        given (its default). A field that failed is left out, except a list
        or mapping whose failures are all in items: it stays, with None in
        place of each failed item, so later rules can check the good ones."""
        source = values if isinstance(values, Mapping) else {}
        out = {}
        for f in self.fields.values():
            value, _ = self._value(f, f.key, source.get(f.key, _ABSENT), item=False)
            if value is not _FAILED:
                out[f.key] = value
        return out

    def _value(self, f: Field, path: str, raw: Any, item: bool) -> tuple[Any, bool]:
        """(value or _FAILED, whether all of it passed)."""
        if not item and (raw is _ABSENT or raw is None):
            if f.required:
                self.add(path, "missing (required)" if raw is _ABSENT
                         else "missing (required): the key is there but has no value", f.fix)
                return _FAILED, False
            return copy.copy(f.default), True
        if not _is(raw, f.types):
            self.add(path, f.wrong_type.format(value=brief(raw), got=type_name(raw),
                                               want=_wanted(f.types)), f.fix)
            return _FAILED, False
        value, ok = raw, True
        if f.fields:
            value, ok = self._record(f, path, raw, item)
            if not ok:
                return _FAILED, False
        elif f.each is not None:
            value, ok = self._items(f.each, path, raw)
        if not ok:
            return value, False
        problem = f.check(value) if f.check else None
        if problem:
            self.add(path, problem, f.fix)
            return _FAILED, False
        return (f.convert(value) if f.convert else value), True

    def _record(self, f: Field, path: str, raw: dict, item: bool) -> tuple[dict, bool]:
        value, ok = {}, True
        for sub in f.fields:
            v, sub_ok = self._value(sub, f"{path}.{sub.key}", raw.get(sub.key, _ABSENT),
                                    item=False)
            ok = ok and sub_ok
            if sub_ok:
                value[sub.key] = v
        known = [sub.key for sub in f.fields]
        for k in raw:
            if k not in known:
                noun = f"a {f.key}" if item else f.key
                self.add(f"{path}.{k}", "unknown key",
                         f"{noun} takes only " + ", ".join(f"`{n}`" for n in known))
                ok = False
        return value, ok

    def _items(self, each: Field, path: str, raw: list | dict) -> tuple[Any, bool]:
        pairs = enumerate(raw) if isinstance(raw, list) else raw.items()
        got, ok = {}, True
        for k, item in pairs:
            sub = f"{path}[{k}]" if isinstance(raw, list) else f"{path}.{k}"
            v, item_ok = self._value(each, sub, item, item=True)
            got[k] = v if item_ok else None
            ok = ok and item_ok
        return (list(got.values()) if isinstance(raw, list) else got), ok


def validate(values: Any, fields: Sequence[Field],
             locate: Locate | None = None) -> tuple[dict[str, Any], list[InventoryError]]:
    """Check values against fields: (checked values, every problem)."""
    v = Validator(fields, locate)
    return v.run(values), v.errors
