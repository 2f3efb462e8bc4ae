"""User-facing errors: one line naming the problem and the fix, never a traceback."""
from __future__ import annotations

import errno
import os
import sys


class UserError(Exception):
    """Bad input from the user (unknown name, missing file, malformed data...).

    The CLI prints ``str(err)`` on one line and exits with status 2.
    """

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} -- fix: {fix}")


def print_error(err: UserError) -> None:
    """The one line every command ends with on bad input: ``litestage-bench: error: PROBLEM -- fix: FIX``."""
    print(f"litestage-bench: error: {err}", file=sys.stderr)


# write failures that the user can mend (the fix for each); any other OSError is a bug
_WRITE_FIXES = {
    errno.ENOSPC: "free disk space (or write elsewhere with --out) and run again",
    errno.EDQUOT: "free space within your disk quota (or write elsewhere with --out) and run again",
    errno.EROFS: "write to a writable folder (--out)",
    errno.EACCES: "write to a folder you may write to (--out), or fix its permissions",
    errno.EPERM: "write to a folder you may write to (--out), or fix its permissions",
}


def write_error(exc: OSError, path: str | os.PathLike | None = None) -> UserError | None:
    """The ``UserError`` for a write that failed for a reason the user can mend (a full disk...), else None."""
    fix = _WRITE_FIXES.get(exc.errno)
    if fix is None:
        return None
    where = path if path is not None else exc.filename
    return UserError(f"could not write {where or 'a file'}: {os.strerror(exc.errno)}", fix)
