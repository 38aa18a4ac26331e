"""The README's own user schedule (``--schedule my_schedule.py:TopFirst``) on the RTL backend.

The simulator runs in its own process; the schedule reaches it as a file and
a class name and is imported there again.  ``--check`` compares every weight
and trace record with the golden model running the same schedule, so a run
under any other schedule (or none) would fail the check.  Run with a relative
and an absolute path; the second reuses the cached cluster build.
"""

from __future__ import annotations

import pytest

from gradsync.cli import main
from tests.readme import readme_schedule

pytest.importorskip("gradsync.hw.cluster")

ARGS = ["train", "--backend", "rtl", "--nodes", "2", "--steps", "2", "--global-batch", "16",
        "--layers", "64,16,10", "--chunk-bytes", "256", "--check", "--quiet", "--no-progress",
        "--no-baselines"]  # fmt: skip



@pytest.mark.rtl
@pytest.mark.slow
def test_readme_top_first_runs_on_rtl_and_matches_the_model(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_schedule.py").write_text(readme_schedule())
    monkeypatch.chdir(tmp_path)
    for spec in ("my_schedule.py:TopFirst", f"{tmp_path / 'my_schedule.py'}:TopFirst"):
        code = main([*ARGS, "--schedule", spec])
        out = capsys.readouterr()
        assert code == 0, out.err
        assert f"2 nodes, {spec}, chunk 256 B" in out.out
        assert "check OK" in out.out, out.out
