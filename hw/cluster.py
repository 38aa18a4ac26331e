"""N full nodes joined by links: the top level the RTL backend of a training run simulates.

``DESIGN.md`` ("N nodes"): node ``i`` (:class:`~gradsync.hw.node.Node`)
transmits to node ``(i + 1) mod N`` over link ``i`` (``hw/link.py``) and
receives from node ``(i - 1) mod N``; with N = 2 the two links form an
exchange pair, with N > 2 a unidirectional ring, as in ``hw/fabric.py``.

Port contract (``sim/rtl_device.py`` codes against it):

* node ``i``: every host port of :class:`~gradsync.hw.node.Node` prefixed
  ``n{i}_`` -- ``n{i}_s_axil_*`` (AXI4-Lite CSR), ``n{i}_s_axis_*`` /
  ``n{i}_m_axis_*`` (bulk port), ``n{i}_irq``, ``n{i}_cycle``, and the
  zero-time debug read ``n{i}_dbg_addr`` (in, device word address as
  ``hw/sram.py`` numbers scratchpad then gradient words) / ``n{i}_dbg_data``
  (out, combinational);
* additionally node ``i``'s NIC counters ``n{i}_tx_packets`` ...
  ``n{i}_rx_drops`` (``hw.fabric.NODE_COUNTERS``);
* link ``i``: fault-injection controls ``l{i}_corrupt_rate`` ... and
  counters ``l{i}_packets`` ... named as :class:`~gradsync.hw.fabric.Fabric`
  names them (``hw.fabric.LINK_CONTROLS``/``LINK_COUNTERS``).

Its default hardware is ``gradsync.spec.hardware.DEFAULT_HARDWARE``, the
preset both backends run by default (one Verilator build serves training runs
and the node/cluster tests).
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import DEFAULT_FORMAT, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig

from .fabric import LINK_CONTROLS, LINK_COUNTERS, NODE_COUNTERS, join_ring
from .link import Link
from .node import HOST_PORTS, Node


class Cluster(wiring.Component):
    """N :class:`~gradsync.hw.node.Node` s in a ring of :class:`~gradsync.hw.link.Link` s, flat ports.

    Parameters
    ----------
    hw, fmt:
        Node and link configuration (``model.HardwareConfig``,
        ``model.FixedPointFormat``); every node and link is the same.
    num_nodes:
        Nodes (>= 2).
    **node_kwargs:
        Passed to every :class:`Node` (host trace stamps).

    Attributes
    ----------
    n{i}_<host port>, n{i}_<counter>
        Node ``i``'s ports (module docstring).
    l{i}_<control>, l{i}_<counter>
        Link ``i`` (node ``i`` to node ``i+1``) fault controls and counters;
        with every control at 0 the link is fault-free.
    """

    def __init__(self, hw: HardwareConfig = DEFAULT_HARDWARE, fmt: FixedPointFormat = DEFAULT_FORMAT,
                 num_nodes: int = 2, **node_kwargs):
        if not isinstance(num_nodes, int) or num_nodes < 2:
            raise ValueError(f"num_nodes must be an int >= 2, not {num_nodes!r}")
        self.hw, self.fmt, self.num_nodes = hw, fmt, num_nodes
        #: The nodes and links (also reachable from Amaranth testbenches).
        self.nodes = [Node(hw, fmt, i, num_nodes, **node_kwargs) for i in range(num_nodes)]
        self.links = [Link(hw.link_latency_cycles, hw.link_bytes_per_cycle)
                      for _ in range(num_nodes)]
        ports = {}
        for i, node in enumerate(self.nodes):
            for name in HOST_PORTS + NODE_COUNTERS:
                member = node.signature.members[name]
                ports[f"n{i}_{name}"] = (In if member.flow is wiring.In else Out)(member.shape)
            ports.update({f"l{i}_{c}": In(w) for c, w in LINK_CONTROLS.items()})
            ports.update({f"l{i}_{c}": Out(32) for c in LINK_COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for i, node in enumerate(self.nodes):
            m.submodules[f"node{i}"] = node
            for name in HOST_PORTS + NODE_COUNTERS:
                mine, theirs = getattr(self, f"n{i}_{name}"), getattr(node, name)
                if node.signature.members[name].flow is wiring.In:
                    m.d.comb += theirs.eq(mine)
                else:
                    m.d.comb += mine.eq(theirs)
        join_ring(m, self, self.nodes, self.links)
        return m
