"""Read, clean and split a raw corpus (a .zip with one text file inside, or a plain text file).

This module deals in plain Python strings only: it knows nothing of tokens or torch, so the
"unzip" and "preprocess" pipeline stages can be tested without either.
"""

from __future__ import annotations

import os
import uuid
import zipfile
from pathlib import Path

UTF8_BOM = "\ufeff"
NEWLINE_MODES = ("keep", "space")


class CorpusError(ValueError):
    """The corpus file exists but cannot be turned into text (corrupt, ambiguous, not UTF-8, empty)."""


def read_raw_text(path: str | Path) -> str:
    """Return the text of `path`: a .zip holding exactly one text file, or a plain text file.

    The bytes are decoded as UTF-8; a leading byte-order mark is dropped (some editors add one,
    and it would otherwise become a token of its own).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} does not exist. A bundled corpus is tracked by DVC: run "
                                f"`dvc pull {path}.dvc` (or `dvc pull`) from the repository root to fetch it. "
                                f"Your own corpus (data=custom): put the .txt or .zip at {path}, or point "
                                "data.raw_path at it (see conf/data/custom.yaml).")
    if path.is_dir():
        raise CorpusError(f"corpus path {path} is a directory; point it at the .zip or .txt file itself.")

    zipped = path.suffix.lower() == ".zip"
    data, source = _read_single_zip_member(path) if zipped else (path.read_bytes(), str(path))

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{source} is not valid UTF-8: byte {err.start} (0x{data[err.start]:02x}) cannot be "
                          f"decoded ({err.reason}). Re-encode the file as UTF-8 (e.g. `iconv -f GB18030 -t "
                          "UTF-8`) or re-fetch it with `dvc pull --force`.") from err

    text = text.removeprefix(UTF8_BOM)
    if not text.strip():
        raise CorpusError(f"{source} is empty ({len(text)} characters, none of them visible): there is "
                          "nothing to train on. Re-fetch it with `dvc pull --force` or point the config at "
                          "another corpus.")
    return text


def _read_single_zip_member(path: Path) -> tuple[bytes, str]:
    """Bytes of the only real member of the zip at `path`, and a `zip:member` name for messages."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            # macOS's Archive Utility adds __MACOSX/ resource forks and .DS_Store files; neither is text.
            members = [info for info in infos if not (info.is_dir() or info.filename.startswith("__MACOSX/")
                                                      or Path(info.filename).name == ".DS_Store")]
            if len(members) != 1:
                listing = ", ".join(info.filename for info in infos) or "(the archive is empty)"
                what = "no text file" if not members else f"{len(members)} files"
                raise CorpusError(f"{path} holds {what}, expected exactly one text file. Entries: {listing}. "
                                  "Repack it with a single .txt inside, or unzip it and point the config at "
                                  "the text file.")
            return archive.read(members[0]), f"{path}:{members[0].filename}"
    except zipfile.BadZipFile as err:
        raise CorpusError(f"{path} is not a readable zip archive (corrupt or truncated: {err}). "
                          f"Re-fetch it with `dvc pull --force {path}`.") from err


def clean_text(text: str, newline: str = "keep", lowercase: bool = False,
               max_chars: int | None = None) -> str:
    """Normalise line ends, optionally flatten lines and lowercase, then keep the first `max_chars`.

    newline="keep" keeps "\\n" as a token (so the model can learn line breaks);
    newline="space" turns every "\\n" into " " as the seeds do. Truncation comes last so that
    `max_chars` counts characters of the cleaned text, like the MXNet seed's `corpus_chars[0:20000]`.
    """
    if newline not in NEWLINE_MODES:
        raise ValueError(f"unknown newline mode {newline!r}; use one of {NEWLINE_MODES}.")
    if max_chars is not None and max_chars < 0:
        raise ValueError(f"max_chars must be >= 0 or None (no limit), got {max_chars}.")

    # Windows line ends become one "\n" first, so "\r\n" does not turn into two tokens;
    # a lone "\r" (old Mac line end or stray byte) carries no meaning for lyrics and is dropped.
    text = text.replace("\r\n", "\n").replace("\r", "")
    if newline == "space":
        text = text.replace("\n", " ")
    if lowercase:
        text = text.lower()
    return text[:max_chars]  # text[:None] is all of it


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Cut `text` by position into {"train", "val", "test"}, in that order.

    Contiguous pieces (not shuffled characters or lines) keep the held-out text a realistic,
    unseen continuation. Sizes are rounded to the nearest character; train takes the rest,
    so train + val + test == text always holds.
    """
    for name, fraction in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {fraction}.")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"val_fraction + test_fraction must be < 1 to leave text for training, "
                         f"got {val_fraction} + {test_fraction} = {val_fraction + test_fraction}.")

    n_val = round(len(text) * val_fraction)
    n_test = round(len(text) * test_fraction)
    train_end = len(text) - n_val - n_test
    val_end = train_end + n_val
    return {"train": text[:train_end], "val": text[train_end:val_end], "test": text[val_end:]}


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so readers see either the old file or the whole new one.

    A pipeline stage that dies half-way must not leave a truncated output that DVC or the next
    stage would take for a real one: write to a temporary file in the same directory (same file
    system, so the rename is atomic) and `os.replace` it over the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        # os.open with 0o666 honours the umask, unlike tempfile's owner-only 0o600.
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as tmp_file:
            tmp_file.write(data)
            tmp_file.flush()
            os.fsync(tmp_file.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Atomically write `text` as UTF-8 (no BOM, "\\n" line ends kept as they are)."""
    atomic_write_bytes(path, text.encode("utf-8"))

