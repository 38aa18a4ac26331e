"""A point module for the lost-worker test: ``run`` kills its worker process.

``crash`` is how many times the point's worker dies before a run returns; the
count is kept in files under ``marks`` (workers share no memory).
"""

from __future__ import annotations

import os
from pathlib import Path


def validate(options: dict) -> dict:
    return dict(options)


def run(config: dict) -> dict:
    marks = Path(config["marks"])
    marks.mkdir(exist_ok=True)
    died = len(list(marks.glob(f"{config['name']}-*")))
    if died < config["crash"]:
        (marks / f"{config['name']}-{died}").touch()
        os._exit(1)  # the worker process is gone, as if its host failed
    return {"name": config["name"], "runs": died + 1}
