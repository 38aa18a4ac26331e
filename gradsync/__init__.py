"""gradsync: RTL, firmware and golden model of a gradient-exchange accelerator.

The sub-packages come from the repository's top-level folders:
``gradsync.hw`` (Amaranth RTL), ``gradsync.model`` (golden NumPy model),
``gradsync.firmware`` (driver and training step) and ``gradsync.sim``
(Verilator toolchain, build cache and cocotb backend).
"""

__version__ = "0.1.0"
