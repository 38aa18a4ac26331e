"""The Verilator build cache as a user sees it: what is built and why, its size, its eviction.

``sim/build.py`` owns the entries (one folder per model, named
``<design>-<key>``, with ``gradsync_build.json``); this module:

* says what a build does: one line before it starts (what, why, how long the
  last build of that design took), the elapsed time while it runs (on a
  terminal), one line after it (where it is cached, and the time split
  between Verilator and the C++ compiler);
* keeps entries small: after a build only what a simulation needs stays (the
  executable, the stamp, the sources and the build log); the precompiled
  headers and object files (about 160 MB for a 2-node cluster) are removed;
* records each entry's last use (the stamp's modification time) and evicts
  the least recently used entries beyond a size limit
  (``$GRADSYNC_CACHE_MAX_MB``, default :data:`DEFAULT_MAX_MB`);
* lists, prunes and clears the cache for ``gradsync cache``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

#: Size limit of the cache in MB when ``$GRADSYNC_CACHE_MAX_MB`` is not set.
DEFAULT_MAX_MB = 2048
#: What a finished entry keeps besides its executable.
KEEP = ("gradsync_build.json", "build.log", "src")
#: Build times of earlier builds, per design (``{"cluster2": 49.3}``).
HISTORY = ".build_times.json"
STAMP = "gradsync_build.json"


def notice(message: str) -> None:
    """One line on stderr (``gradsync: ...``)."""
    print(f"gradsync: {message}", file=sys.stderr, flush=True)


def _history(root: Path) -> dict:
    try:
        data = json.loads((root / HISTORY).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def record_build_time(root: Path, design_top: str, seconds: float) -> None:
    """Remember how long the last build of ``design_top`` took (for the next announcement)."""
    data = _history(root)
    data[design_top] = round(seconds, 1)
    tmp = root / f".{HISTORY}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, root / HISTORY)


def announce_build(root: Path, design_top: str, reason: str) -> None:
    """The line before a build: what is built, why, and how long the last one took."""
    last = _history(root).get(design_top)
    took = (
        f"the last build of {design_top} took {last:.0f} s"
        if isinstance(last, int | float)
        else "a first build takes about 1 to 3 minutes on 2 cores"
    )
    notice(f"building the Verilator model of {design_top} ({reason}); {took}")


class Ticker:
    """Elapsed time of a build on stderr, once a second, while stderr is a terminal."""

    def __init__(self, what: str, stream=None) -> None:
        self.what, self.stream = what, stream or sys.stderr
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Ticker:
        if getattr(self.stream, "isatty", lambda: False)():
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            seconds = time.monotonic() - self.started
            self.stream.write(f"\r  {self.what}: {seconds:4.0f} s")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.stream.write("\r\033[K")
            self.stream.flush()


def trim_entry(directory: Path, executable: str) -> None:
    """Delete what a finished build no longer needs (precompiled headers, objects, C++)."""
    keep = {executable, *KEEP}
    for path in directory.iterdir():
        if path.name in keep:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def touch(directory: Path) -> None:
    """Mark an entry as used now (its stamp's modification time orders the eviction)."""
    with contextlib.suppress(OSError):
        os.utime(directory / STAMP)


@dataclass(frozen=True)
class Entry:
    """One cached model."""

    path: Path
    design_top: str
    bytes: int
    last_used: float  #: seconds since the epoch
    build_seconds: float | None


def _size(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def entries(root: Path) -> list[Entry]:
    """The finished entries under ``root``, most recently used first."""
    found = []
    if not root.is_dir():
        return found
    for path in root.iterdir():
        stamp = path / STAMP
        if path.name.startswith(".") or not path.is_dir() or not stamp.is_file():
            continue
        try:
            info = json.loads(stamp.read_text())
        except (OSError, ValueError):
            info = {}
        found.append(
            Entry(
                path,
                str(info.get("design_top", path.name.rsplit("-", 1)[0])),
                _size(path),
                stamp.stat().st_mtime,
                info.get("build_seconds"),
            )
        )
    return sorted(found, key=lambda e: e.last_used, reverse=True)


def max_bytes() -> int:
    """The cache's size limit: ``$GRADSYNC_CACHE_MAX_MB`` (MB) or :data:`DEFAULT_MAX_MB`."""
    text = os.environ.get("GRADSYNC_CACHE_MAX_MB", "")
    try:
        mb = float(text) if text else DEFAULT_MAX_MB
    except ValueError:
        raise ValueError(f"GRADSYNC_CACHE_MAX_MB must be a number of MB, not {text!r}") from None
    if mb <= 0:
        raise ValueError(f"GRADSYNC_CACHE_MAX_MB must be positive, not {text!r}")
    return int(mb * 1024 * 1024)


def prune(root: Path, limit: int, *, keep: Path | None = None) -> list[Entry]:
    """Evict least recently used entries until the rest fit in ``limit`` bytes; never ``keep``.

    Returns the evicted entries. The elaboration index files that named them
    are dropped too (they would only miss).
    """
    evicted, total = [], 0
    for e in entries(root):  # most recent first: keep while they fit
        if keep is not None and e.path == keep:
            total += e.bytes
            continue
        if total + e.bytes <= limit:
            total += e.bytes
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        evicted.append(e)
    if evicted:
        _drop_index_entries(root, {e.path.name for e in evicted})
    return evicted


def _drop_index_entries(root: Path, names: set[str]) -> None:
    for index in (root / "index").glob("*.json"):
        try:
            if json.loads(index.read_text()).get("directory") in names:
                index.unlink()
        except (OSError, ValueError, AttributeError):
            pass


def clear(root: Path) -> int:
    """Remove every entry, index and leftover of the cache; returns the bytes freed."""
    if not root.is_dir():
        return 0
    freed = _size(root)
    shutil.rmtree(root, ignore_errors=True)
    return freed


def human(n: int) -> str:
    """Bytes as ``12.3 MB``."""
    for unit, scale in (("GB", 1 << 30), ("MB", 1 << 20), ("kB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
