"""The README's first command, run from a temporary directory: index, serve, search."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_demo_finds_described_clips(tmp_path):
    workdir = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--workdir", str(workdir)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    summary = json.loads((workdir / "demo-results.json").read_text())
    captions = [q for q in summary["queries"] if q["described"] is not None]
    assert len(captions) == 8
    for query in captions:
        assert query["described"] in query["results"], query
    free_text = [q for q in summary["queries"] if q["described"] is None]
    assert free_text
    assert all(len(q["results"]) == 3 for q in free_text)

    # The index stays behind for later queries.
    assert (workdir / "index" / "CURRENT").is_file()
    assert "described clip ranked first for" in result.stdout
    status = subprocess.run(
        [sys.executable, "-m", "indexer.cli", "status", "--index-dir", str(workdir / "index")],
        capture_output=True, text=True, timeout=120,
    )
    assert status.returncode == 0
    assert "indexed 40" in status.stdout
