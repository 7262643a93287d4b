"""The training step's features on a 2-rank gloo job: amp bf16, clipping, accumulation,
and the live clip / accumulate commands applied by every rank at the same step."""

from __future__ import annotations

import pytest

from tests.distributed.conftest import TINY
from tests.distributed.test_torchrun import same_run

pytestmark = [pytest.mark.subprocess, pytest.mark.slow]


def test_amp_clip_and_accumulation_on_every_rank(jobs):
    job = jobs("features")
    session = job.detach(
        TINY, "--paused", "--amp", "bf16", "--grad-clip", "0.5", "--accumulate", "2"
    )
    job.do("step 5")
    job.wait_step(5, "PAUSED")
    job.do("clip 0.1")
    job.do("accumulate 3")
    job.do("step 4")
    job.wait_step(9, "PAUSED")
    view = session.snapshot().step_view
    assert view is not None and (view.amp, view.grad_clip, view.accumulate) == ("bf16", 0.1, 3)
    assert view.clip_steps == 9 and view.grad_norm is not None
    # rank 0's per-group signals (the all-reduced, clipped gradients; the other rank
    # measures none): within the max norm of the step measured
    signals = session.snapshot().signals
    assert signals and all(s.step >= 1 and s.grad_norm is not None for s in signals)
    assert sum(s.grad_norm**2 for s in signals if s.grad_norm) ** 0.5 <= 0.5 * (1 + 1e-5)
    job.do("stop")
    end = same_run(job.wait_ranks())  # the same weights and optimizer state on both ranks
    assert end["step"] == 9
    applied = [
        (step, cmd) for step, cmd in end["applied"] if cmd.split()[0] in ("clip", "accumulate")
    ]
    assert applied == [(5, "clip 0.1"), (5, "accumulate 3")]
    header = job.journal()[0]
    assert header["step"] == {"amp": "bf16", "grad_clip": 0.5, "accumulate": 2, "compile": False}
