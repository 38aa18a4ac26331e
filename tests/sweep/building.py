"""A point module for the build test: a model per ``hw`` key, built before its points run.

Builds and runs leave files under ``marks`` (workers share no memory), so the
test can count the builds and check that each point ran after its build ended.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def validate(options: dict) -> dict:
    return dict(options)


def build_key(config: dict) -> str:
    return config["hw"]


def build(config: dict) -> str:
    marks = Path(config["marks"])
    marks.mkdir(exist_ok=True)
    if config["hw"] == "broken":
        raise RuntimeError("the model of 'broken' does not build")
    time.sleep(0.3)  # long enough for a second build of the same key to overlap
    done = marks / f"build-{config['hw']}-{os.getpid()}-{time.monotonic_ns()}"
    done.touch()
    return str(done)


def run(config: dict) -> dict:
    built = list(Path(config["marks"]).glob(f"build-{config['hw']}-*"))
    return {"hw": config["hw"], "builds_before_run": len(built)}
