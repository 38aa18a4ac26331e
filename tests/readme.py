"""The README's own examples, read from it (one source: tests run what users copy)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_schedule() -> str:
    """The python block of the README that defines the user schedule ``TopFirst``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    return next(b for b in blocks if "class TopFirst" in b)
