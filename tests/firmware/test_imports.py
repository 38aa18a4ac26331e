"""firmware/ must run against any backend: it may import nothing from hw/, sim/ or model/."""

from __future__ import annotations

import ast
from pathlib import Path

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
FORBIDDEN = (
    "gradsync.hw",
    "gradsync.sim",
    "gradsync.model",
    "hw",
    "sim",
    "model",
    "asyncio",
    "cocotb",
)


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names.add("." * node.level + (node.module or ""))
            else:
                names.add(node.module or "")
    return names


def test_firmware_imports_no_backend():
    files = sorted(FIRMWARE.glob("*.py"))
    assert len(files) >= 8
    for path in files:
        for name in imported_modules(path):
            for bad in FORBIDDEN:
                assert name != bad and not name.startswith(bad + "."), f"{path.name} imports {name}"
            assert not name.startswith(".."), (
                f"{path.name} uses a relative import out of firmware: {name}"
            )


def test_checker_sees_a_forbidden_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from gradsync.model import numerics\nimport gradsync.sim.build\n")
    assert {"gradsync.model", "gradsync.sim.build"} <= imported_modules(bad)
