"""Metrics: metrics.jsonl every --log-every steps; the run log throttled by time."""

from __future__ import annotations

import json

import pytest

from tests.unit.models import make_spec
from tuiconsole.engine.trainer import RunConfig, Trainer


@pytest.mark.parametrize("interval, lines", [(0.0, 10), (3600.0, 1)])
def test_log_lines_are_throttled_but_the_file_keeps_every_record(tmp_path, interval, lines):
    t = Trainer(
        make_spec(), RunConfig(run_dir=tmp_path, log_every=10, log_min_interval=interval)
    ).prepare()
    t.step_now(100)
    logged = [e.text for e in t._log_tail() if e.kind == "metrics"]
    assert len(logged) == lines
    assert logged[0].startswith("step 10 epoch")
    t.close()
    records = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"][:10] == list(range(10, 101, 10))
