"""progress.timed: the one way a runbook's step is announced, run and
recorded for its result table."""

from __future__ import annotations

import pytest

from mailops.core import progress

pytestmark = pytest.mark.unit


def test_a_step_is_announced_then_run_and_shows_its_text(capsys):
    value, shown, seconds = progress.timed("move", "mail3", "copy", lambda: "copied")
    assert (value, shown) == ("copied", "copied") and seconds >= 0
    assert capsys.readouterr().err.rstrip().endswith("move      mail3    copy")


def test_a_step_without_text_shows_done_and_keeps_its_value():
    value, shown, _ = progress.timed("rebuild", "mail2", "bootstrap", lambda: 3, done="done")
    assert (value, shown) == (3, "done")
    assert progress.timed("dkim", "example.test", "publish", lambda: None)[1] == "ok"


def test_a_failing_step_raises_and_records_nothing():
    def fail():
        raise RuntimeError("no route")
    with pytest.raises(RuntimeError, match="no route"):
        progress.timed("migrate", "legacy1", "sync", fail)
