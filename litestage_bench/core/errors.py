"""User-facing errors: one line naming the problem and the fix, never a traceback."""
from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, malformed data...).

    The CLI prints ``str(err)`` on one line and exits with status 2.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} -- fix: {fix}")
