"""Atomic, provenance-stamped reading and writing of artifacts.

Every artifact is written to a temporary file in the destination folder and then
renamed over the target, so a failed or interrupted run never leaves a half-written
file or destroys what was already built. JSONL appends are line-atomic (one
``write`` + flush per record) so that resumable stages can pick up where they
stopped; readers skip a truncated final line and report any other bad line by
file and line number. Everything written is strict JSON (:func:`dumps`: a NaN becomes ``null``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .errors import InputError, MedkitError

_UMASK = os.umask(0)
os.umask(_UMASK)
STALE_TEMP_SECONDS = 3600  # temp folders older than this belong to dead runs


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it over ``target`` on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or ".tmp", dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; artifacts get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def build_folder(target: str | Path, build: Callable[[Path], None], is_complete: Callable[[Path], bool], *,
                 stale_after: float = STALE_TEMP_SECONDS) -> Path:
    """``target`` built once by ``build(tmp)`` in a temp folder beside it, then renamed into place.

    A complete ``target`` is returned as it is; an incomplete one (a killed run's) is replaced. A
    failed build leaves nothing behind, a build that ``is_complete`` rejects is an error, and
    temp folders of dead runs older than ``stale_after`` seconds are removed. When a concurrent run
    published first, its folder is kept and ours is discarded.
    """
    target = Path(target)
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for leftover in target.parent.glob(_temp_prefix(target) + "*"):
        if leftover.is_dir() and now - leftover.stat().st_mtime > stale_after:
            shutil.rmtree(leftover, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
    try:
        build(tmp)
        if is_complete(target):
            return target
        if target.exists():
            stale = Path(tempfile.mkdtemp(prefix=_temp_prefix(target), dir=target.parent))
            os.replace(target, stale / "incomplete")
            shutil.rmtree(stale, ignore_errors=True)
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes it 0700; the cache may be shared between clones
        try:
            os.rename(tmp, target)
        except OSError:
            if not is_complete(target):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if not is_complete(target):
        raise InputError(target, "the build finished but the folder is incomplete; delete it and retry")
    return target


def write_text(target: str | Path, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def strict(obj: Any) -> Any:
    """``obj`` with every NaN or infinite float replaced by ``None`` (JSON has no NaN: a bare ``NaN`` makes a
    file that strict readers, e.g. browsers and ``jq``, reject); containers are copied, other values kept."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """Strict JSON text of ``obj``: NaN / infinity become ``null`` (see :func:`strict`), unknown types ``str``."""
    try:
        return json.dumps(obj, allow_nan=False, default=str, **kwargs)
    except ValueError:  # a NaN somewhere: the slow path only then
        return json.dumps(strict(obj), allow_nan=False, default=str, **kwargs)


def write_json(target: str | Path, obj: Any) -> Path:
    """``obj`` as strict, indented, key-sorted JSON, written atomically."""
    return write_text(target, dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(path, f"not valid JSON ({e.msg})", line=e.lineno) from None


def write_parquet(target: str | Path, df: pd.DataFrame) -> Path:
    with atomic_path(target, suffix=".parquet") as tmp:
        df.to_parquet(tmp, index=False)
    return Path(target)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found (build it first: `make data` or the notebook that writes it)")
    try:
        return pd.read_parquet(path, columns=columns)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise InputError(path, f"cannot read as Parquet ({type(e).__name__}: {e})") from None


def write_jsonl(target: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write all records atomically (replaces ``target``); returns the count."""
    n = 0
    with atomic_path(target, suffix=".jsonl") as tmp, open(tmp, "w", encoding="utf-8") as f:
        for rec in records:
            f.write(dumps(rec, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append one record as one line, flushed and fsynced (for resumable stages)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = dumps(record, ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


@contextlib.contextmanager
def all_or_nothing(folder: str | Path) -> Iterator[None]:
    """Run the block; if it fails, put ``folder`` back as it was before it (files it wrote are restored,
    files it added removed), so a failed rerun of a stage cannot clobber the previous stage's results.

    The snapshot is a tree of hard links beside ``folder`` (free, and safe because the kit writes every
    artifact atomically: a rewritten file is a new inode, the snapshot keeps the old one). Hidden
    entries (scratch files such as a notebook's running copy) are neither saved nor touched."""
    folder = Path(folder)
    snap = folder.with_name(f".{folder.name}.before")
    shutil.rmtree(snap, ignore_errors=True)

    def visible(root: Path) -> dict[Path, Path]:
        return {p.relative_to(root): p for p in sorted(root.rglob("*"))
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)}

    for rel, src in visible(folder).items() if folder.exists() else ():
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, snap / rel)
        except OSError:  # a file system without hard links: a copy
            shutil.copy2(src, snap / rel)
    try:
        yield
    except BaseException:
        before = visible(snap) if snap.exists() else {}
        for rel, path in visible(folder).items():
            if rel not in before:
                path.unlink()
        for rel, saved in before.items():
            target = folder / rel
            if not target.exists() or not os.path.samefile(saved, target):
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(saved, target)
        raise
    finally:
        shutil.rmtree(snap, ignore_errors=True)


def check_writable(folder: str | Path) -> None:
    """Fail at once, naming the folder, when ``folder`` cannot be created or written (a stage checks its
    output folder before its work, not after it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise InputError(folder, f"cannot write there ({e.strerror or type(e).__name__})") from None


def settings_key(settings: Any) -> str:
    """A short, stable hash of the settings that shape a stage's records (canonical JSON: key order,
    tuples vs lists and the process's hash seed do not change it). Resumable stages store it in each
    record and redo a record made under other settings instead of reusing it."""
    import hashlib

    text = json.dumps(settings, sort_keys=True, ensure_ascii=False, default=str, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


@contextlib.contextmanager
def exclusive(lock_file: str | Path, what: str) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_file`` for the block (``flock``: released when the process ends,
    even by a kill). A second process asking for it meanwhile is refused at once with a clear error
    naming the holder, instead of running beside it and duplicating or interleaving its work."""
    import fcntl

    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    f = open(lock_file, "a+", encoding="utf-8")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise MedkitError(f"{what} is in use by another run ({holder}); wait for it to finish") from None
    try:
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}, since {_dt.datetime.now(_dt.timezone.utc).isoformat(timespec='seconds')}\n")
        f.flush()
        yield
    finally:
        f.close()


def timings_path(path: str | Path) -> Path:
    """The file beside a resumable log that holds its records' timings (``x.jsonl`` -> ``x_timings.jsonl``)."""
    path = Path(path)
    return path.with_name(path.name.removesuffix(".jsonl") + "_timings.jsonl")


def append_with_timings(path: str | Path, record: dict[str, Any], key: dict[str, Any],
                        fields: Sequence[str]) -> None:
    """Append ``record`` to a resumable log with its measured ``fields`` moved to :func:`timings_path`.

    Timings differ from run to run; kept out of the records, the same seed and settings give the same
    bytes. The timing line (``key`` plus the fields) is written first: a run killed in between leaves a
    timing whose job is redone (:func:`read_timings` keeps the last per key), never a record without one.
    """
    timing = {f: record.pop(f) for f in fields if f in record}
    if timing:
        append_jsonl(timings_path(path), {**key, **timing})
    append_jsonl(path, record)


def read_timings(path: str | Path, key: Sequence[str]) -> list[dict[str, Any]]:
    """The timings kept beside the log ``path``: the last line per ``key`` (fields of the timing lines)."""
    tpath = timings_path(path)
    if not tpath.exists():
        return []
    return list({tuple(r.get(k) for k in key): r for r in read_jsonl(tpath)}.values())


def repair_jsonl_tail(path: str | Path) -> int:
    """Cut a torn last line (no final newline) left by an interrupted append; returns bytes removed.

    Resumable stages call this before appending, so a torn line never ends up in the middle.
    """
    path = Path(path)
    if not path.exists():
        return 0
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    with open(path, "r+b") as f:
        f.truncate(keep)
    return len(data) - keep


def read_jsonl(path: str | Path, *, required: Iterable[str] = (), allow_truncated_tail: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file, naming the line of any malformed record.

    A final line without a newline that fails to parse is what an interrupted
    append leaves behind; it is dropped when ``allow_truncated_tail`` is true (a resumable log),
    and an error otherwise (a file written whole, where a torn line is damage).
    """
    return [rec for _, rec in read_jsonl_numbered(path, required=required, allow_truncated_tail=allow_truncated_tail)]


def read_jsonl_numbered(path: str | Path, *, required: Iterable[str] = (), allow_truncated_tail: bool = True
                        ) -> list[tuple[int, dict[str, Any]]]:
    """:func:`read_jsonl` with each record's line number (for errors found later, e.g. by a schema)."""
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    required = tuple(required)
    data = path.read_bytes()
    try:
        raw = data.decode("utf-8")
    except UnicodeDecodeError as e:  # name the line, not a byte offset deep in a traceback
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise InputError(path, f"not valid UTF-8 (byte {data[e.start]:#04x} at column {column})",
                         line=data.count(b"\n", 0, e.start) + 1) from None
    lines = raw.split("\n")
    records: list[tuple[int, dict[str, Any]]] = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        is_tail = i == len(lines) and not raw.endswith("\n")
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if is_tail and allow_truncated_tail:
                break
            raise InputError(path, f"not valid JSON ({e.msg})", line=i) from None
        if not isinstance(rec, dict):
            raise InputError(path, f"expected a JSON object, got {type(rec).__name__}", line=i)
        for field in required:
            if field not in rec:
                raise InputError(path, "required field missing", line=i, field=field)
        records.append((i, rec))
    return records


def package_version(package: str) -> str | None:
    """Installed version of a distribution, or None if it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def provenance(**parameters: Any) -> dict[str, Any]:
    """A provenance block: medkit version, python, package versions, time, parameters."""
    from . import __version__

    return {
        "medkit_version": __version__,
        "python": platform.python_version(),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "packages": {p: package_version(p) for p in ("pandas", "networkx", "pyahocorasick", "torch", "transformers",
                                                     "trl", "peft", "datasets", "bm25s")},
        "parameters": parameters,
    }
