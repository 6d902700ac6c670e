"""Where the project is: the folder holding conf/config.yaml, from the working directory up, never
from this package's location (an install elsewhere must read the project the user is in).
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT_VARIABLE = "LYRICIST_ROOT"
MARKER = Path("conf") / "config.yaml"


def project_root(configured: str | Path | None = None) -> Path:
    """paths.root if set, else $LYRICIST_ROOT, else the nearest folder up that holds conf/config.yaml."""
    chosen = configured or os.environ.get(ROOT_VARIABLE)
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / MARKER).is_file():
            raise FileNotFoundError(f"{root} is not a lyricist project (no {MARKER}): fix "
                                    f"paths.root or ${ROOT_VARIABLE}")
        return root
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / MARKER).is_file():
            return folder
    raise FileNotFoundError(f"no lyricist project here: neither {cwd} nor a folder above it holds "
                            f"{MARKER}. Run from the project's folder, or set ${ROOT_VARIABLE} to it")
