"""samples/s and tokens/s of a loop of its own: from the batch given to steer.step."""

from __future__ import annotations

import pytest
import torch

from tests.library.steerloop import BATCH, batch, make
from tuiconsole.engine.snapshot import Snapshot


def test_own_loop_counts_the_batch_it_is_given(new_steer) -> None:
    parts = make()
    steer = new_steer(parts, max_steps=100)
    for step in range(20):
        loss = parts.take(step)
        steer.step(loss, batch=batch(step))
    snap: Snapshot = steer._run._build_snapshot()
    tel, sps = snap.telemetry, snap.status.steps_per_sec
    assert tel.batch_size == BATCH and tel.samples_per_sec == pytest.approx(BATCH * sps)
    assert tel.tokens_per_sec is None
    assert tel.data_wait is None and tel.compute is None  # its data is the loop's own
    assert tel.eta == pytest.approx(80 / sps)  # --max-steps / steer(max_steps=) is known

    plain = make()
    steer = new_steer(plain)
    for step in range(5):
        steer.step(plain.take(step))  # no batch given: no samples/s
    tel = steer._run._build_snapshot().telemetry
    assert tel.samples_per_sec is None and tel.eta is None


def test_token_ids_given_as_the_batch_make_tokens_per_sec(new_steer) -> None:
    parts = make()
    steer = new_steer(parts)
    ids = torch.zeros(2, 5, dtype=torch.long)  # a (B, T) batch of token ids
    for step in range(6):
        steer.step(parts.take(step), batch={"input_ids": ids})
    snap = steer._run._build_snapshot()
    tel, sps = snap.telemetry, snap.status.steps_per_sec
    assert tel.batch_size == 2 and tel.tokens_per_sec == pytest.approx(10 * sps)
