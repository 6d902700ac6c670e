"""User errors: bad input or settings that the message itself tells how to fix, printed by an entry
point as one line, `error: <message>`, with exit status 2 (docs/reliability.md); the traceback with
$LYRICIST_FULL_ERROR=1 or $HYDRA_FULL_ERROR=1. Any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from typing import Any


class UserError(Exception):
    """Not bad input, yet the user's to fix, and the message says how: a run stopped by the
    divergence guard, an unusable tracking store."""


class NoSpace(OSError):
    """A file not written for want of space (the earlier one kept): the message names the folder
    and the space needed."""


# ValueError covers the library's own refusals (CorpusError, VocabError, RunDirError, bad
# settings); FileNotFoundError a missing corpus, checkpoint or encoded data.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, FileNotFoundError, NotADirectoryError,
                                                IsADirectoryError, UserError, NoSpace)


def full_error() -> bool:
    return any(os.environ.get(name, "") not in ("", "0") for name in ("LYRICIST_FULL_ERROR", "HYDRA_FULL_ERROR"))


def report(err: BaseException) -> int:
    """Print `err` as one line (or with its traceback under $LYRICIST_FULL_ERROR); the exit status."""
    if full_error():
        traceback.print_exception(err)
    else:
        print(f"error: {_said(err)}\n(set LYRICIST_FULL_ERROR=1 for the traceback)", file=sys.stderr)
    if os.environ.get("DVC_EXP_NAME") and "/.dvc/tmp/" not in os.environ.get("DVC_ROOT", "/.dvc/tmp/"):
        print("(dvc exp run: params.yaml keeps this experiment's values; `git checkout params.yaml` restores "
              "the committed ones)", file=sys.stderr)
    return 2  # argparse's status for a usage error


def _said(err: BaseException) -> str:
    """The message; Python's bare "[Errno 2] No such file or directory: 'x'" said with the fix."""
    if not (isinstance(err, OSError) and err.filename and str(err).startswith("[Errno")):
        return str(err)
    if isinstance(err, FileNotFoundError):
        return (f"{err.filename} does not exist: check the path (a DVC stage's input is written by the stages "
                "before it: `dvc repro <stage>` runs them first)")
    return f"{err.filename}: {err.strerror.lower()}: check the path"


def run_cli(main: Callable[[], Any]) -> int:
    """Run an entry point's `main()`: 0 when it returns (or its int), 2 with one line on a user error."""
    try:
        result = main()
    except USER_ERRORS as err:
        return report(err)
    return result if isinstance(result, int) else 0
