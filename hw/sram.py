"""Scratchpad and gradient SRAMs of one node, with one port per client lane.

``DESIGN.md`` ("One node"): the scratchpad holds weights, activations and
output gradients; the gradient SRAM holds dW and the reduced gradients. Both
are operand-word memories built with :mod:`amaranth.lib.memory`. Clients see
one *device word address* space: bit ``addr_bits - 1`` selects the bank
(0: scratchpad, 1: gradient SRAM), the bits below it index the bank's words.
``hw/sequencer.py`` turns the register map's byte addresses
(``gradsync.spec.regmap.SCRATCH_BASE`` / ``GRAD_BASE``) into this form.
"""

from __future__ import annotations

from amaranth.hdl import Module, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from gradsync.spec.host import device_addr_bits


def read_port_signature(addr_bits: int, width: int) -> wiring.Signature:
    """A synchronous read port as its client sees it: data one cycle after ``en``."""
    return wiring.Signature({"addr": Out(addr_bits), "en": Out(1), "data": In(width)})


def write_port_signature(addr_bits: int, width: int) -> wiring.Signature:
    """A write port as its client sees it: the word is written at the clock edge."""
    return wiring.Signature({"addr": Out(addr_bits), "data": Out(width), "en": Out(1)})


__all__ = ["DeviceMemory", "device_addr_bits", "read_port_signature", "write_port_signature"]


class DeviceMemory(wiring.Component):
    """Scratchpad and gradient SRAM banks behind ``read_ports`` + ``write_ports`` client ports.

    Each bank is one :class:`amaranth.lib.memory.Memory` with a read and a
    write port per client port, the bank chosen by the address's top bit.
    Every lane of every engine owns its port, so lanes never conflict and an
    engine's throughput is independent of its operand layout (a macro with
    that many ports is what a banked layout with conflict-free lane
    interleaving would provide; the model charges no bank conflicts).

    Parameters
    ----------
    scratch_words, grad_words:
        Bank sizes in operand words (each >= 1).
    width:
        Operand word width in bits.
    read_ports, write_ports:
        Number of client ports of each kind.
    init_scratch, init_grad:
        Optional initial contents (simulation only).
    debug_port:
        Add ``dbg_en``/``dbg_addr``/``dbg_data``: a combinational (zero-latency)
        read of ``debug_words`` consecutive words, for testbenches that inspect
        memory without a clock edge.
    debug_words:
        Words the debug port returns at once (a simulator evaluates the design
        once per address: a testbench reading ``n`` words pays ``n / debug_words``
        evaluations).

    Attributes
    ----------
    rd : In(read_port_signature).array(read_ports)
        Read ports; ``data`` is valid the cycle after ``en`` (latency 1,
        ``gradsync.spec.timing.SRAM_READ_LATENCY_CYCLES``) and holds while ``en`` is low.
    wr : In(write_port_signature).array(write_ports)
        Write ports; when two ports write the same word in one cycle the
        higher-numbered port wins.
    dbg_en : In(1, init=1), dbg_addr : In(addr_bits), dbg_data : Out(width * debug_words)
        Only with ``debug_port``: while ``dbg_en`` is high, bits
        ``[k*width, (k+1)*width)`` of ``dbg_data`` are the word at device word
        address ``dbg_addr + k`` in the same cycle, in the bank of ``dbg_addr``
        (0 beyond that bank's end); 0 while it is low. A simulator evaluates the
        read's multiplexers only while ``dbg_en`` is high (Verilator puts logic
        that a top-level input reaches into every evaluation; ``hw/node.py``
        drives ``dbg_en`` from a port, low except during a debug read). Left
        unconnected it stays high.

    Behaviour
    ---------
    No back-pressure. A read or write beyond a bank's size is not performed
    (reads return 0); the sequencer and the DMA engine refuse such commands
    before they touch memory.
    """

    def __init__(self, scratch_words: int, grad_words: int, width: int = 16,
                 read_ports: int = 1, write_ports: int = 1, init_scratch=(), init_grad=(),
                 debug_port: bool = False, debug_words: int = 1):
        for name, value in (("scratch_words", scratch_words), ("grad_words", grad_words),
                            ("width", width), ("read_ports", read_ports),
                            ("write_ports", write_ports), ("debug_words", debug_words)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self.scratch_words = scratch_words
        self.grad_words = grad_words
        self.width = width
        self.addr_bits = device_addr_bits(scratch_words, grad_words)
        self._init = (list(init_scratch), list(init_grad))
        self.debug_port = debug_port
        self.debug_words = debug_words
        ports = {
            "rd": In(read_port_signature(self.addr_bits, width)).array(read_ports),
            "wr": In(write_port_signature(self.addr_bits, width)).array(write_ports),
        }
        if debug_port:
            ports.update(
                {
                    "dbg_en": In(1, init=1),
                    "dbg_addr": In(self.addr_bits),
                    "dbg_data": Out(width * debug_words),
                }
            )
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        index_bits = self.addr_bits - 1
        banks = []
        for b, (name, depth) in enumerate((("scratch", self.scratch_words), ("grad", self.grad_words))):
            mem = memory.Memory(shape=self.width, depth=depth, init=self._init[b])
            m.submodules[name] = mem
            banks.append((mem, depth))

        for p, port in enumerate(self.rd):
            bank = port.addr[index_bits]
            index = port.addr[:index_bits]
            sel = Signal(2, name=f"rd{p}_sel")  # registered bank one-hot: data mux after latency
            with m.If(port.en):
                m.d.sync += sel.eq(0)
            for b, (mem, depth) in enumerate(banks):
                rp = mem.read_port()
                hit = (bank == b) & (index < depth)
                m.d.comb += [rp.addr.eq(index), rp.en.eq(port.en & hit)]
                with m.If(port.en & hit):
                    m.d.sync += sel[b].eq(1)
                with m.If(sel[b]):
                    m.d.comb += port.data.eq(rp.data)

        for port in self.wr:
            bank = port.addr[index_bits]
            index = port.addr[:index_bits]
            for b, (mem, depth) in enumerate(banks):
                wp = mem.write_port()
                m.d.comb += [
                    wp.addr.eq(index),
                    wp.data.eq(port.data),
                    wp.en.eq(port.en & (bank == b) & (index < depth)),
                ]

        if self.debug_port:
            bank = self.dbg_addr[index_bits]
            index = self.dbg_addr[:index_bits]
            w = self.width
            with m.If(self.dbg_en):
                for b, (mem, depth) in enumerate(banks):
                    for k in range(self.debug_words):
                        rp = mem.read_port(domain="comb")
                        at = index + k
                        m.d.comb += rp.addr.eq(at)
                        with m.If((bank == b) & (at < depth)):
                            m.d.comb += self.dbg_data[k * w : (k + 1) * w].eq(rp.data)
        return m
