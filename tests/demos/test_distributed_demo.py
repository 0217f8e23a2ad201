"""``smartlab demo --distributed``: Redis, PostgreSQL, Tiled on it and two workers, for real."""

from __future__ import annotations

import io
from pathlib import Path

from smartlab_demos.distributed import run_distributed_demo


def test_the_distributed_demo_spreads_runs_over_two_workers_with_in_process_results(
    tmp_path: Path,
):
    out = io.StringIO()
    comparisons = run_distributed_demo(runs=2, points=21, out=out, run_dir=tmp_path)
    printed = out.getvalue()

    assert {c.plugin for c in comparisons} == {"peak_stats", "spinwave_cnn"}
    assert len({c.worker for c in comparisons}) == 2, printed  # one run each
    assert all(c.equal for c in comparisons), printed
    assert all(c.identical for c in comparisons if c.plugin == "peak_stats"), printed
    assert {c.rows for c in comparisons} == {21, 5}  # the scan's points, the count's frames
    assert all(c.raw_events == c.rows for c in comparisons)  # the raw runs, beside the results
    assert "PostgreSQL" in printed and "redis://" in printed
