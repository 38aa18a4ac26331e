"""The commands a sweep point may run, each a module with the same few functions.

A point module provides:

- ``validate(options: dict) -> config``: the point's configuration, built the way
  the single command builds it; raises ``ValueError`` naming the key and the value;
- ``run(config) -> dict``: the point's result, flat columns (numbers and strings);
  a module-level function, so that Dask workers import it by name;
- optionally ``hash_input(config) -> dict``: everything that decides the result
  (default: the configuration, a dataclass as a dict);
- optionally ``build_key(config) -> str | None`` and ``build(config)``: a model
  to build once per distinct key before the points that need it run (RTL).

Adding a command is one entry in :data:`COMMANDS`.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class Command:
    """A sweepable command: its name and the module holding its point functions."""

    name: str
    module: str

    def _mod(self) -> ModuleType:
        return importlib.import_module(self.module)

    def validate(self, options: dict) -> Any:
        return self._mod().validate(options)

    @property
    def run(self):
        """The module-level function a worker calls with the configuration."""
        return self._mod().run

    def hash_input(self, config) -> dict:
        fn = getattr(self._mod(), "hash_input", None)
        if fn is not None:
            return fn(config)
        return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else config

    def build_key(self, config) -> str | None:
        fn = getattr(self._mod(), "build_key", None)
        return fn(config) if fn is not None else None

    @property
    def build(self):
        """The module-level function that builds the model a ``build_key`` names."""
        return self._mod().build


#: The sweepable commands by name.
COMMANDS: dict[str, Command] = {
    "train": Command("train", "gradsync.sweep.train_point"),
    "scale": Command("scale", "gradsync.scale.point"),
    "faults": Command("faults", "gradsync.faults_campaign"),
}


def get(name: str) -> Command:
    """The command ``name``; ``ValueError`` lists the ones there are."""
    try:
        return COMMANDS[name]
    except KeyError:
        raise ValueError(
            f"command {name!r} cannot be swept (commands: {', '.join(sorted(COMMANDS))})"
        ) from None
