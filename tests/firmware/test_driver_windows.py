"""Driver.open_window / arm_window refuse a window the device does not have (issue 15)."""

from __future__ import annotations

import dataclasses

import pytest

from gradsync.firmware.driver import Driver
from gradsync.model.cluster import Cluster
from gradsync.spec import regmap as rm
from gradsync.spec.formats import DEFAULT_FORMAT
from gradsync.spec.hardware import DEFAULT_HARDWARE


def _run(program, windows: int = DEFAULT_HARDWARE.rx_windows):
    hw = dataclasses.replace(DEFAULT_HARDWARE, rx_windows=windows)
    return Cluster(1, hw, DEFAULT_FORMAT).run([program])


@pytest.mark.parametrize(
    ("window", "windows", "method"),
    [(200, 64, "open"), (64, 64, "open"), (-1, 64, "open"), (16, 16, "arm"), (True, 64, "open")],
)
def test_a_window_beyond_the_device_is_a_value_error(window, windows, method):
    async def program(dev):
        drv = Driver(dev)
        await drv.init(0)
        if method == "open":
            await drv.open_window(window, rm.GRAD_BASE, rm.GRAD_BASE, 64, 1, 64)
        else:
            await drv.arm_window(window, 64)

    sentence = f"RX window {window!r} does not exist: this device has windows 0..{windows - 1}"
    with pytest.raises(ValueError, match=f"^{sentence}$".replace(".", r"\.")):
        _run(program, windows)


def test_the_last_window_opens():
    async def program(dev):
        drv = Driver(dev)
        info = await drv.init(0)
        await drv.open_window(info.rx_windows - 1, rm.GRAD_BASE, rm.GRAD_BASE, 64, 5, 64)
        return await dev.read32(rm.rx_window_reg(info.rx_windows - 1, "TAG"))

    assert _run(program).results == [5]
