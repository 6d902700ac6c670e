"""Read, clean and split a raw corpus (a .zip holding one text file, or a text file), or read a
pre-split one (`data.split_files` in a folder or a .zip). Plain strings only: no tokens, no torch."""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
import uuid
import zipfile
from contextlib import contextmanager
from itertools import combinations
from pathlib import Path

UTF8_BOM = "\ufeff"
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
NEWLINE_MODES = ("keep", "space")
# data.max_raw_bytes' and data.max_compression_ratio's defaults: a corpus is a few MB of text; more is a mistake
# (a symlink to a disk image, a zip bomb) that would fill memory before anything fails. Text deflates 3-5x.
MAX_RAW_BYTES = 200_000_000
MAX_COMPRESSION_RATIO = 100.0
# Python's zipfile reads these; Deflate64 (9, Windows Explorer's choice for big files) it cannot.
ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# Unicode's Cc (C0, DEL, C1) but \t \n \r: no meaning in lyrics, each would be a token (NUL: refused on reading).
CONTROL_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


class CorpusError(ValueError):
    """The corpus file exists but cannot be turned into text (corrupt, ambiguous, not UTF-8, empty)."""


def read_raw_text(path: str | Path, max_bytes: int = MAX_RAW_BYTES,
                  max_ratio: float = MAX_COMPRESSION_RATIO) -> str:
    """The text of `path` (a .zip holding exactly one text file, or a text file; a regular file only:
    a FIFO or device would hang), at most `max_bytes`, from a zip member compressed <= `max_ratio` times."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"corpus file {path} does not exist. A bundled corpus is tracked by DVC: run "
                                f"`dvc pull {path}.dvc` from the repository root to fetch it. "
                                f"Your own corpus (data=custom): put the .txt or .zip at {path}, or point "
                                "data.raw_path at it (see conf/data/custom.yaml).")
    if path.is_dir():
        raise CorpusError(f"corpus path {path} is a directory; point it at the .zip or .txt file itself, or, "
                          "for a corpus that comes as train, valid and test files in this folder, name them "
                          "in data.split_files (see conf/data/presplit.yaml).")
    check_regular_file(path)
    if path.suffix.lower() != ".zip":
        return _decode(_read_bounded(path, max_bytes), str(path), path)
    with _zip(path) as archive:
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
        return _read_member(archive, members[0], f"{path}:{members[0].filename}", path, max_bytes, max_ratio)


def _decode(data: bytes, source: str, path: Path) -> str:
    """`data` as UTF-8 text (BOM dropped), refused if gzip, UTF-16, not UTF-8, binary or empty; `path`: to re-fetch."""
    refetch = f"re-fetch it with `dvc pull --force {path}.dvc`" if Path(f"{path}.dvc").is_file() else ""
    if data.startswith(b"\x1f\x8b"):
        raise CorpusError(f"{source} is gzip-compressed, not text: `gunzip` it (or put the text in a .zip) and "
                          "point data.raw_path at the result")
    if data.startswith(UTF16_BOMS):
        raise CorpusError(f"{source} is UTF-16 text (it starts with a UTF-16 byte-order mark). Re-encode it "
                          "as UTF-8: `iconv -f UTF-16 -t UTF-8 <file> > <file>.utf8.txt`.")

    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise CorpusError(f"{source} is not valid UTF-8: byte {err.start} (0x{data[err.start]:02x}) cannot be "
                          f"decoded ({err.reason}). Re-encode the file as UTF-8 (`iconv -f <its encoding, e.g. "
                          f"CP1252 or GB18030> -t UTF-8`){' or ' + refetch if refetch else ''}.") from err

    text = text.removeprefix(UTF8_BOM)
    if "\0" in text:
        raise CorpusError(f"{source} holds {text.count(chr(0)):,} NUL characters (the first at character "
                          f"{text.index(chr(0)):,}): it is binary, or UTF-16 text without a byte-order mark "
                          "(then `iconv -f UTF-16LE -t UTF-8 <file> > <file>.utf8.txt`), not UTF-8 text.")
    if not text.strip():
        raise CorpusError(f"{source} is empty ({len(text)} characters, none of them visible): there is "
                          f"nothing to train on. {(refetch + ' or p') if refetch else 'P'}oint the config at another "
                          "corpus.")
    return text


def check_regular_file(path: Path, fix: str = "Point data.raw_path at a .txt or .zip file.") -> None:
    """Refuse at once anything but a regular file (after symlinks), naming what it is and `fix`."""
    mode = path.stat().st_mode  # stat, not open: opening a FIFO blocks until a writer comes
    if stat.S_ISREG(mode):
        return
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode)
            else "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "not a regular file")
    via = f" (a symlink to {os.path.realpath(path)})" if path.is_symlink() else ""
    raise CorpusError(f"corpus path {path}{via} is {kind}, not a regular file: it could be read forever "
                      f"or block. {fix}")


def _too_big(source: str, size: str, max_bytes: int) -> CorpusError:
    return CorpusError(f"{source} is {size} bytes of text, above the limit of {max_bytes:,} "
                       f"(data.max_raw_bytes). Raise it if the corpus is really that big, e.g. "
                       f"data.max_raw_bytes={max_bytes * 10}, or train on a part of it.")


def _read_bounded(path: Path, max_bytes: int) -> bytes:
    size = path.stat().st_size
    if size > max_bytes:
        raise _too_big(str(path), f"{size:,}", max_bytes)
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)  # bounded even if the file grows while it is read
    if len(data) > max_bytes:
        raise _too_big(str(path), f"more than {max_bytes:,}", max_bytes)
    return data


@contextmanager
def _zip(path: Path):
    """The zip archive at `path`; a corrupt or truncated one refused in one line."""
    try:
        with zipfile.ZipFile(path) as archive:
            yield archive
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as err:
        raise CorpusError(f"{path} is not a readable zip archive (corrupt or truncated: {err}). "
                          f"Re-fetch it with `dvc pull --force {path}.dvc`.") from err


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, source: str, path: Path, max_bytes: int,
                 max_ratio: float) -> str:
    """The member's text, refused before decompression when encrypted, in a method zipfile cannot
    read, or bigger or more compressed than the limits; bounded while read (headers can lie)."""
    if info.flag_bits & 0x1:
        raise CorpusError(f"{source} is encrypted (password-protected); lyricist reads no passwords. "
                          "Unzip it yourself and point data.raw_path at the text file.")
    if info.compress_type not in ZIP_METHODS:
        method = "Deflate64" if info.compress_type == 9 else f"method {info.compress_type}"
        raise CorpusError(f"{source} is compressed with {method}, which Python's zipfile cannot read. "
                          "Repack it with Deflate (`zip -9 corpus.zip corpus.txt`), or unzip it yourself "
                          "and point data.raw_path at the text file.")
    if info.file_size > max_bytes:
        raise _too_big(source, f"{info.file_size:,}", max_bytes)
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > max_ratio:
        raise CorpusError(f"{source} expands {ratio:,.0f} times ({info.compress_size:,} -> {info.file_size:,} "
                          f"bytes), above the limit of {max_ratio:g} (data.max_compression_ratio): text "
                          "deflates 3-5 times, a zip bomb thousands. Raise it if you trust the file, e.g. "
                          f"data.max_compression_ratio={max_ratio * 10:g}.")
    with archive.open(info) as member:
        data = member.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise _too_big(source, f"more than {max_bytes:,}", max_bytes)
    return _decode(data, source, path)


SPLITS = ("train", "val", "test")


def normal_name(name: str) -> str:
    """A relative path or zip member name in one spelling ("/"): "./a" and "a/" are "a", "a//b" and "a/./b" "a/b"."""
    return posixpath.normpath(name.replace(os.sep, "/"))


def check_distinct_texts(texts: dict[str, str], sources: dict[str, str]) -> None:
    """Refuse two splits of one content (by hash): every held-out figure would measure training text."""
    seen: dict[str, str] = {}
    for split, text in texts.items():
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if (first := seen.setdefault(digest, split)) != split:
            raise CorpusError(f"the {first} and {split} files ({sources[first]} and {sources[split]}) hold the same "
                              f"text (sha256 {digest[:12]}...): the {split} figures would measure the {first} text. "
                              "Name three different files in data.split_files.")


def read_split_texts(raw_path: str | Path, split_files: dict[str, str], max_bytes: int = MAX_RAW_BYTES,
                     max_ratio: float = MAX_COMPRESSION_RATIO) -> dict[str, str]:
    """Each split's text, from the file `split_files` names in the folder or .zip `raw_path`, read as read_raw_text."""
    path = Path(raw_path)
    if not path.exists():
        raise FileNotFoundError(f"pre-split corpus {path} does not exist: put the folder (or .zip) holding "
                                f"{', '.join(split_files.values())} there, or point data.raw_path at it "
                                "(see conf/data/presplit.yaml).")
    if path.is_dir():
        files = {split: (path / normal_name(name)).resolve() for split, name in split_files.items()}
        _check_one_each(files, split_files)  # a symlink, or a name through another folder
        texts = {split: _read_split_file(path, split, name, max_bytes) for split, name in split_files.items()}
        check_distinct_texts(texts, {split: str(file) for split, file in files.items()})
        return texts
    check_regular_file(path, "Point data.raw_path at the folder or .zip holding the split files.")
    if path.suffix.lower() != ".zip":
        raise CorpusError(f"data.raw_path={str(path)!r} is a single file, but data.split_files names three: point "
                          "data.raw_path at the folder or .zip holding them, or set data.split_files=null to "
                          "split this file by position.")
    with _zip(path) as archive:
        members = {split: _split_member(archive, path, split, name) for split, name in split_files.items()}
        _check_one_each({split: info.filename for split, info in members.items()}, split_files)
        sources = {split: f"{path}:{info.filename}" for split, info in members.items()}
        texts = {split: _read_member(archive, info, f"the {split} file {sources[split]}", path, max_bytes, max_ratio)
                 for split, info in members.items()}
    check_distinct_texts(texts, sources)
    return texts


def _check_one_each(found: dict[str, object], split_files: dict[str, str]) -> None:
    """Refuse two splits that name one file (resolved path, or zip member) in two ways."""
    for first, second in combinations(SPLITS, 2):
        if found[first] == found[second]:
            raise CorpusError(f"data.split_files.{first}={split_files[first]!r} and data.split_files.{second}="
                              f"{split_files[second]!r} are one file ({found[first]}): train, val and test "
                              "must be three files.")


def _read_split_file(folder: Path, split: str, name: str, max_bytes: int) -> str:
    file = folder / name
    if not file.exists():
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:10]) or "nothing"
        raise CorpusError(f"the {split} file {file} does not exist (data.split_files.{split}={name!r}); "
                          f"{folder} holds {present}. Name the file as it is in the folder.")
    fix = f"Point data.split_files.{split} at a text file inside {folder}."
    if file.is_dir():
        raise CorpusError(f"the {split} file {file} is a directory, not a text file. {fix}")
    check_regular_file(file, fix)
    return _decode(_read_bounded(file, max_bytes), f"the {split} file {file}", folder)


def _split_member(archive: zipfile.ZipFile, path: Path, split: str, name: str) -> zipfile.ZipInfo:
    """The one member `name` names: by its normalised path or, when none has it, the one whose path
    ends in "/<name>" (archives often hold a top folder, e.g. ptb/ptb.train.txt)."""
    infos = [info for info in archive.infolist() if not info.is_dir()]
    wanted = normal_name(name)
    matches = ([info for info in infos if normal_name(info.filename) == wanted]
               or [info for info in infos if normal_name(info.filename).endswith("/" + wanted)])
    if len(matches) != 1:
        listing = ", ".join(info.filename for info in infos[:10]) or "(the archive is empty)"
        what = "no member" if not matches else f"{len(matches)} members"
        raise CorpusError(f"{path} holds {what} named {name!r} (data.split_files.{split}); its files: {listing}. "
                          "Name the member as it is in the archive, e.g. its full path inside it.")
    return matches[0]


def check_split_texts(splits: dict[str, str]) -> None:
    """Refuse a pre-split corpus whose cleaned split is empty (e.g. a file of control characters only)."""
    for split, part in splits.items():
        if not part.strip():
            raise CorpusError(f"the cleaned {split} split is empty ({len(part)} characters, none visible): "
                              "check data.max_chars (null keeps all, e.g. data.max_chars=null) and the "
                              f"corpus' {split} file.")


def count_control_chars(text: str) -> int:
    """How many characters clean_text strips as control characters."""
    return len(CONTROL_CHARS.findall(text))


def clean_text(text: str, newline: str = "keep", lowercase: bool = False,
               max_chars: int | None = None) -> str:
    """Strip control characters, normalise line ends, `newline` ("keep": "\\n" a token; "space": as the seeds),
    lowercase, and keep the first `max_chars` of the result (last, as the MXNet seed's `corpus_chars[0:20000]`)."""
    if newline not in NEWLINE_MODES:
        raise ValueError(f"unknown newline mode {newline!r}; use one of {NEWLINE_MODES}.")
    if max_chars is not None and max_chars < 0:
        raise ValueError(f"max_chars must be >= 0 or None (no limit), got {max_chars}.")
    # "\r\n" becomes one "\n", not two tokens; a lone "\r" (an old Mac line end, a stray byte) is dropped.
    text = CONTROL_CHARS.sub("", text).replace("\r\n", "\n").replace("\r", "")
    if newline == "space":
        text = text.replace("\n", " ")
    if lowercase:
        text = text.lower()
    return text[:max_chars]  # text[:None] is all of it


def split_text(text: str, val_fraction: float, test_fraction: float) -> dict[str, str]:
    """Cut `text` by position (held out: unseen continuations): val, test rounded to characters, train the rest."""
    if not (val_fraction >= 0 and test_fraction >= 0 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be >= 0 with a sum "
                         "below 1, to leave text for training.")
    val_end = len(text) - round(len(text) * test_fraction)
    train_end = val_end - round(len(text) * val_fraction)
    return {"train": text[:train_end], "val": text[train_end:val_end], "test": text[val_end:]}


def check_splits(splits: dict[str, str], fractions: dict[str, float]) -> None:
    """Refuse an empty split before it is written: train always, val and test when their `fractions` ask for text."""
    total = sum(len(part) for part in splits.values())
    if total == 0:
        raise CorpusError("the cleaned corpus is empty (0 characters): nothing to split. Check data.max_chars "
                          "(0 keeps nothing; null keeps all, e.g. data.max_chars=null) and the raw corpus.")
    for name, part in splits.items():
        if part or (name != "train" and fractions.get(name, 0) == 0):
            continue
        key = "1 - data.val_fraction - data.test_fraction" if name == "train" else f"data.{name}_fraction"
        raise CorpusError(f"the {name} split is empty: {key} of {total:,} characters rounds to 0. Use a longer "
                          "corpus (or data.max_chars=null), or a bigger fraction, e.g. data.val_fraction=0.1.")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` as a temporary file beside it, renamed over it: readers see the old or the new whole."""
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

