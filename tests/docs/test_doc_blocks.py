"""Every ```python block of the driver and schedule docs runs, so the docs cannot go stale.

A file's blocks run in order in one namespace (later blocks use earlier
definitions), in a fresh temporary working directory.  ``python file=NAME``
also writes the block to ``NAME`` there (a schedule file the next block
loads); ``python no-run`` is skipped.  A failure names the document and the
line of the document where the failing statement is.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = ["docs/driver.md", "docs/schedules.md"]
FENCE = re.compile(r"^```python(?P<info>[^\n]*)$")


@dataclass(frozen=True)
class Block:
    line: int  #: line of the document holding the block's first line of code
    options: tuple[str, ...]
    code: str


class DocBlockError(AssertionError):
    """A block of a document failed; the message names the document and line."""


def blocks(text: str) -> list[Block]:
    """The ```python blocks of a Markdown text, with their first code line (1-based)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        i += 1
        if not m:
            continue
        start, body = i + 1, []
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        if i == len(lines):
            raise DocBlockError(f"block at line {start} has no closing ```")
        i += 1
        out.append(Block(start, tuple(m["info"].split()), "\n".join(body) + "\n"))
    return out


def run_blocks(doc: str, text: str, workdir: Path) -> int:
    """Run ``text``'s blocks in order in ``workdir``; return how many ran."""
    namespace: dict = {"__name__": "__doc_block__"}
    ran = 0
    for block in blocks(text):
        if "no-run" in block.options:
            continue
        for opt in block.options:
            if opt.startswith("file="):
                (workdir / opt[5:]).write_text(block.code)
        # pad with newlines so tracebacks carry the document's own line numbers
        code = compile("\n" * (block.line - 1) + block.code, doc, "exec")
        try:
            exec(code, namespace)
        except Exception as exc:
            lines = [f.lineno for f in traceback.extract_tb(exc.__traceback__) if f.filename == doc]
            where = lines[-1] if lines else block.line
            raise DocBlockError(
                f"{doc}:{where}: the block at line {block.line} raised {type(exc).__name__}: {exc}"
            ) from exc
        ran += 1
    return ran


@pytest.mark.parametrize("doc", DOCS)
def test_every_python_block_runs(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / doc).read_text()
    assert (
        run_blocks(doc, text, tmp_path)
        == len([b for b in blocks(text) if "no-run" not in b.options])
        >= 2
    )


def test_a_failing_block_is_reported_with_document_and_line(tmp_path):
    text = "# t\n\n```python\nx = 1\n```\n\ntext\n\n```python\ny = x + 1\nassert y == 3, y\n```\n"
    with pytest.raises(
        DocBlockError, match=r"^t\.md:11: the block at line 10 raised AssertionError: 2$"
    ):
        run_blocks("t.md", text, tmp_path)


def test_blocks_options_and_unclosed_fence(tmp_path):
    text = "```python file=s.py\nV = 3\n```\n```python no-run\nraise SystemExit\n```\n```\nnot python\n```\n"
    found = blocks(text)
    assert [(b.line, b.options) for b in found] == [(2, ("file=s.py",)), (5, ("no-run",))]
    assert run_blocks("t.md", text, tmp_path) == 1 and (tmp_path / "s.py").read_text() == "V = 3\n"
    with pytest.raises(DocBlockError, match="block at line 2 has no closing"):
        blocks("```python\nx = 1\n")
