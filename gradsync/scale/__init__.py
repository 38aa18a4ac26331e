"""Collective-level simulator: one data-parallel training step at chunk granularity.

See ``docs/scale.md``.  :mod:`gradsync.scale.config` is the interface;
:mod:`gradsync.scale.sim` the simulator.
"""
