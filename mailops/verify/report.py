"""verify's results: a row per check (check, target, result, detail, cause,
remedy), the report they make, and the typed outcome every probe returns.
Every verify module imports this one; it imports none of them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from mailops.core.progress import step, table

OK, WARN, FAIL = "ok", "warn", "fail"


@dataclass(frozen=True)
class Outcome:
    """What a probe found: ok with a detail, or a warning/failure with its
    cause and remedy."""

    result: str
    detail: str = ""
    cause: str = ""
    remedy: str = ""

    @classmethod
    def ok(cls, detail: str) -> Outcome:
        return cls(OK, detail)

    @classmethod
    def warn(cls, detail: str, cause: str, remedy: str) -> Outcome:
        return cls(WARN, detail, cause, remedy)

    @classmethod
    def fail(cls, cause: str, remedy: str, detail: str = "") -> Outcome:
        return cls(FAIL, detail, cause, remedy)

    def row(self, check: str, target: str) -> Row:
        return Row(check, target, self.result, self.detail, self.cause, self.remedy)


@dataclass(frozen=True)
class Row:
    check: str
    target: str
    result: str  # ok, warn or fail
    detail: str = ""
    cause: str = ""
    remedy: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    @property
    def failed(self) -> list[Row]:
        return [r for r in self.rows if r.result == FAIL]

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self) -> dict[str, int]:
        return {k: sum(r.result == k for r in self.rows) for k in (OK, WARN, FAIL)}

    def summary(self) -> str:
        c = self.counts()
        return f"{c[OK]} ok, {c[WARN]} warning(s), {c[FAIL]} failed"

    def table(self) -> str:
        out = table(["check", "target", "result", "detail"],
                    [[r.check, r.target, r.result, r.detail] for r in self.rows])
        for r in self.rows:
            if r.result != OK:
                out += f"\n\n{r.result.upper()}: {r.check} ({r.target})\n  cause:  {r.cause}" \
                       f"\n  remedy: {r.remedy}"
        return out

    def to_list(self) -> list[dict]:
        return [asdict(r) for r in self.rows]


    def add(self, check: str, target: str, outcome: Outcome) -> Row:
        row = outcome.row(check, target)
        self.rows.append(row)
        return row


def run_probe(report: Report, check: str, target: str, probe: Callable[[], Outcome],
              on_error: Callable[[BaseException], tuple[str, str]], where: str = "-") -> bool:
    """Run one probe and add its row; an exception becomes a failed row
    (on_error gives its cause and remedy), and so does a probe that returns
    no Outcome. True when the probe did not fail."""
    t0 = time.monotonic()
    try:
        outcome = probe()
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row
        cause, remedy = on_error(exc)
        outcome = Outcome.fail(cause, remedy)
    if not isinstance(outcome, Outcome):
        outcome = Outcome.fail(f"the probe returned {outcome!r}, not a result",
                               "a bug in mailops' verify: report it with this row")
    report.add(check, target, outcome)
    note = f"FAILED ({outcome.cause})" if outcome.result == FAIL else outcome.result
    step("verify", where, f"{check}: {note} ({time.monotonic() - t0:.1f} s)")
    return outcome.result != FAIL
