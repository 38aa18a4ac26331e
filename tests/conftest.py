"""Shared test set-up: RTL tests fail with the toolchain's one sentence, not a traceback."""

import pytest


@pytest.fixture(autouse=True)
def _verilator_for_rtl_tests(request):
    if request.node.get_closest_marker("rtl") is None:
        return
    from gradsync.sim.toolchain import ToolchainError, check_host_tools, find_verilator

    try:
        find_verilator()
        check_host_tools()
    except ToolchainError as exc:
        pytest.fail(str(exc), pytrace=False)
