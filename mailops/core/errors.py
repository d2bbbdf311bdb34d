"""Errors that reach the user: each names the file, the key and the fix."""

from __future__ import annotations

from pathlib import Path


class MailopsError(Exception):
    """An error with a cause and a remedy, printed without a traceback."""


class InventoryError(MailopsError):
    def __init__(self, file: Path | str, key: str, problem: str, fix: str) -> None:
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.file}: {key}: {problem}\n  fix: {fix}")


class InventoryErrors(MailopsError):
    """Every problem found in one pass, so the user fixes them all at once."""

    def __init__(self, errors: list[InventoryError]) -> None:
        self.errors = errors
        lines = [f"inventory has {len(errors)} problem(s); no host was touched:"]
        lines += [str(e) for e in errors]
        super().__init__("\n".join(lines))
