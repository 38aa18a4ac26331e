"""N full nodes joined by links: the top level the RTL backend of a training run simulates.

``DESIGN.md`` ("N nodes"): node ``i`` (:class:`~gradsync.hw.node.Node`)
transmits to node ``(i + 1) mod N`` over link ``i`` (``hw/link.py``) and
receives from node ``(i - 1) mod N``; with N = 2 the two links form an
exchange pair, with N > 2 a unidirectional ring (enough for ring
reduce-scatter + all-gather); :func:`join_ring` wires it.

Port contract (``sim/rtl_device.py`` codes against it):

* node ``i``: every host port of :class:`~gradsync.hw.node.Node` prefixed
  ``n{i}_`` -- ``n{i}_s_axil_*`` (AXI4-Lite CSR), ``n{i}_s_axis_*`` /
  ``n{i}_m_axis_*`` (bulk port), ``n{i}_irq``, ``n{i}_cycle``, and the
  zero-time debug read ``n{i}_dbg_en`` (in, high during a read) /
  ``n{i}_dbg_addr`` (in, device word address as ``hw/sram.py`` numbers
  scratchpad then gradient words) / ``n{i}_dbg_data`` (out, combinational);
* additionally node ``i``'s NIC counters ``n{i}_tx_packets`` ...
  ``n{i}_rx_drops`` (``hw.node.NODE_COUNTERS``); with ``compute=False``
  nodes (communication-only, see :class:`~gradsync.hw.node.Node`) also
  ``n{i}_compute_done``;
* link ``i``: fault-injection controls ``l{i}_corrupt_rate`` ... and
  counters ``l{i}_packets`` ... (``hw.link.LINK_CONTROLS``/``LINK_COUNTERS``).

Its default hardware is ``gradsync.spec.hardware.DEFAULT_HARDWARE``, the
preset both backends run by default (one Verilator build serves training runs
and the node/cluster tests).
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.formats import DEFAULT_FORMAT, BFloat16Format, FixedPointFormat
from gradsync.spec.hardware import DEFAULT_HARDWARE, HardwareConfig

from .link import LINK_CONTROLS, LINK_COUNTERS, Link
from .node import HOST_PORTS, NODE_COUNTERS, Node


def join_ring(m: Module, top, nodes, links) -> None:
    """Node ``i`` transmits over ``links[i]`` to node ``(i + 1) mod N``; ``l{i}_*`` ports of ``top``.

    Link ``i`` takes node ``i``'s current bandwidth and latency (``LINK_SET``) for
    both its data and its acknowledgement direction.
    Adds the links as submodules ``link{i}`` and wires their fault-injection
    controls (``LINK_CONTROLS``) and counters (``LINK_COUNTERS``) to ``top``.
    """
    n = len(nodes)
    for i, link in enumerate(links):
        m.submodules[f"link{i}"] = link
        src, dst = nodes[i], nodes[(i + 1) % n]
        wiring.connect(m, src.tx, link.tx)
        wiring.connect(m, link.rx, dst.rx)
        wiring.connect(m, dst.rx_ack, link.ack_tx)
        wiring.connect(m, link.ack_rx, src.tx_ack)
        m.d.comb += [
            link.run_bytes_per_cycle.eq(src.link_bytes_per_cycle),
            link.run_latency.eq(src.link_latency),
        ]
        for c in LINK_CONTROLS:
            m.d.comb += getattr(link, c).eq(getattr(top, f"l{i}_{c}"))
        for c in LINK_COUNTERS:
            m.d.comb += getattr(top, f"l{i}_{c}").eq(getattr(link, c))


class Cluster(wiring.Component):
    """N :class:`~gradsync.hw.node.Node` s in a ring of :class:`~gradsync.hw.link.Link` s, flat ports.

    Parameters
    ----------
    hw, fmt:
        Node and link configuration (``gradsync.spec.hardware.HardwareConfig``,
        ``FixedPointFormat`` or ``BFloat16Format``); every node and link is the same.
    num_nodes:
        Nodes (>= 2).
    **node_kwargs:
        Passed to every :class:`Node` (host trace stamps; ``compute=False``
        and ``credits`` for the communication block tests).

    Attributes
    ----------
    n{i}_<host port>, n{i}_<counter>
        Node ``i``'s ports (module docstring).
    l{i}_<control>, l{i}_<counter>
        Link ``i`` (node ``i`` to node ``i+1``) fault controls and counters;
        with every control at 0 the link is fault-free.
    """

    def __init__(
        self,
        hw: HardwareConfig = DEFAULT_HARDWARE,
        fmt: FixedPointFormat | BFloat16Format = DEFAULT_FORMAT,
        num_nodes: int = 2,
        **node_kwargs,
    ):
        if not isinstance(num_nodes, int) or num_nodes < 2:
            raise ValueError(f"num_nodes must be an int >= 2, not {num_nodes!r}")
        self.hw, self.fmt, self.num_nodes = hw, fmt, num_nodes
        #: The nodes and links (also reachable from Amaranth testbenches).
        self.nodes = [Node(hw, fmt, i, num_nodes, **node_kwargs) for i in range(num_nodes)]
        self.links = [
            Link(hw.link_latency_cycles, hw.link_bytes_per_cycle, hw.link_width_bytes)
            for _ in range(num_nodes)
        ]
        #: Node ports each node exposes as ``n{i}_<name>``.
        self.node_ports = HOST_PORTS + NODE_COUNTERS
        if "compute_done" in self.nodes[0].signature.members:
            self.node_ports += ("compute_done",)
        ports = {}
        for i, node in enumerate(self.nodes):
            for name in self.node_ports:
                member = node.signature.members[name]
                ports[f"n{i}_{name}"] = (In if member.flow is wiring.In else Out)(member.shape)
            ports.update({f"l{i}_{c}": In(w) for c, w in LINK_CONTROLS.items()})
            ports.update({f"l{i}_{c}": Out(32) for c in LINK_COUNTERS})
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        for i, node in enumerate(self.nodes):
            m.submodules[f"node{i}"] = node
            for name in self.node_ports:
                mine, theirs = getattr(self, f"n{i}_{name}"), getattr(node, name)
                if node.signature.members[name].flow is wiring.In:
                    m.d.comb += theirs.eq(mine)
                else:
                    m.d.comb += mine.eq(theirs)
        join_ring(m, self, self.nodes, self.links)
        return m
