"""Which files cocotb has pytest rewrite: the test modules, not every import (sim/build.py)."""

from _pytest.pathlib import fnmatch_ex

from gradsync.sim.build import assertion_rewrite_files


def rewritten(pattern: str, path: str) -> bool:
    """pytest's own rule: a file is rewritten when one ``python_files`` glob matches it."""
    return any(fnmatch_ex(glob, path) for glob in pattern.split())


def test_the_test_modules_keep_their_assertion_messages():
    pattern = assertion_rewrite_files("gradsync.sim.train_cocotb")
    for path in (
        "/repo/sim/train_cocotb.py",  # the module run, whatever its name
        "/repo/tests/hw/cocotb_cluster.py",
        "/repo/examples/test_gemm_node.py",
        "/repo/tests/system/test_rtl_device.py",
    ):
        assert rewritten(pattern, path), path


def test_library_modules_are_not_rewritten():
    pattern = assertion_rewrite_files("cocotb_cluster")
    for path in (
        "/repo/sim/rtl_device.py",
        "/repo/gradsync/firmware/driver.py",
        "/venv/site-packages/numpy/core/numeric.py",
        "/venv/site-packages/amaranth/hdl/_ast.py",
    ):
        assert not rewritten(pattern, path), path
