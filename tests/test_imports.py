"""The one-way doors between the rooms (``docs/architecture.md``), checked on every source file.

``spec`` imports none of the others; ``hw`` imports only ``spec`` (and
amaranth); ``model`` and ``firmware`` import only ``spec`` and themselves
(with numpy and the standard library); only ``sim``, the CLI (``gradsync/``
top-level modules) and tests join them.  Imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROOMS = ("spec", "hw", "model", "firmware", "sim")
#: room -> (folder, project rooms it may import, third-party top-level packages it may import)
RULES = {
    "spec": (ROOT / "gradsync" / "spec", {"spec"}, {"numpy"}),
    "hw": (ROOT / "hw", {"spec", "hw"}, {"amaranth"}),
    "model": (ROOT / "model", {"spec", "model"}, {"numpy", "ml_dtypes"}),
    "firmware": (ROOT / "firmware", {"spec", "firmware"}, {"numpy", "sklearn"}),
}


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _package_of(path, root)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def _package_of(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts[:-1])
    if parts and parts[0] in ROOMS:  # hw/ -> gradsync.hw (setuptools package-dir)
        parts = ["gradsync", *parts]
    return ".".join(parts)


def room_of(module: str) -> str | None:
    """The project room a module name belongs to (None: not gradsync)."""
    parts = module.split(".")
    if parts[0] != "gradsync":
        return None
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return "cli"


def violations(
    path: Path, allowed_rooms: set[str], allowed_third: set[str], root: Path = ROOT
) -> list[str]:
    import sys

    bad = []
    for name in sorted(imported_modules(path, root)):
        room = room_of(name)
        top = name.split(".")[0]
        if room is not None:
            if room not in allowed_rooms:
                bad.append(f"{path.relative_to(root)} imports {name} (room {room})")
        elif (
            top not in sys.stdlib_module_names and top not in allowed_third and top != "__future__"
        ):
            bad.append(f"{path.relative_to(root)} imports {name} (third-party {top})")
    return bad


@pytest.mark.parametrize("room", list(RULES))
def test_room_imports_only_what_it_may(room):
    folder, rooms, third = RULES[room]
    files = sorted(folder.glob("*.py"))
    assert files, f"no sources found in {folder}"
    bad = [v for path in files for v in violations(path, rooms, third)]
    assert not bad, "\n".join(bad)


def test_firmware_uses_no_event_loop_of_its_own():
    """Firmware is async Python against the device protocol: no asyncio, no cocotb."""
    for path in sorted(RULES["firmware"][0].glob("*.py")):
        for name in imported_modules(path):
            assert name.split(".")[0] not in ("asyncio", "cocotb"), f"{path.name} imports {name}"


@pytest.mark.parametrize(
    "room, source, offender",
    [
        ("hw", "from gradsync.model.numerics import FixedPointFormat\n", "gradsync.model.numerics"),
        ("hw", "from gradsync.firmware import driver\n", "gradsync.firmware"),
        ("spec", "def f():\n    from gradsync.hw import nic\n", "gradsync.hw"),
        (
            "model",
            "from gradsync.firmware.experiment import TrainConfig\n",
            "gradsync.firmware.experiment",
        ),
        ("firmware", "import gradsync.sim.build\n", "gradsync.sim.build"),
        ("firmware", "from ..model import device\n", "gradsync.model"),
        ("model", "from gradsync import cmd_train\n", "gradsync"),
        ("hw", "import numpy\n", "numpy"),
    ],
)
def test_checker_catches_a_forbidden_import(tmp_path, room, source, offender):
    """Each of the cross imports this project had before gradsync/spec, planted in a room."""
    folder = RULES[room][0]
    fake_root = tmp_path
    target = fake_root / folder.relative_to(ROOT)
    target.mkdir(parents=True)
    path = target / "planted.py"
    path.write_text(source)
    bad = violations(path, RULES[room][1], RULES[room][2], fake_root)
    assert any(offender in v for v in bad), bad


#: Modules the simulator process of a fixed-point RTL run imports (``sim/train_cocotb.py`` and
#: what it pulls in) and the packages none of them may load at import: Amaranth (the cached
#: model needs no design, ``sim/build.py``'s Deferred component) and ml_dtypes (0.7 takes about
#: a second to import; ``model/fp.py`` imports it only to convert to bf16).
SIMULATOR_SIDE = (
    "gradsync.sim.train_cocotb",
    "gradsync.sim.rtl_backend",
    "gradsync.firmware.experiment",
    "gradsync.model_backend",
)
NOT_AT_IMPORT = ("amaranth", "ml_dtypes")


def test_simulator_side_imports_load_neither_amaranth_nor_ml_dtypes():
    """In a fresh interpreter (this process has imported both already)."""
    import subprocess
    import sys

    code = (
        f"import sys\nfor m in {SIMULATOR_SIDE!r}:\n    __import__(m)\n"
        f"print(sorted(p for p in {NOT_AT_IMPORT!r} if p in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr
