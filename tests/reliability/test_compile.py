"""`compile`: torch.compile of the model on CPU (inductor; gcc builds its kernels). The
first step compiles while the run serves snapshots that say so; the run trains as the
eager one does; optimizer commands never recompile; a compile that fails leaves the run
training eagerly. Slow (compiling takes up to a minute on a loaded 2-core box), and
marked subprocess: inductor runs g++."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from tests.reliability.helpers import loader_spec, sync_trainer, weights
from tests.unit.models import wait_for
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.timeout(900)]

COMMANDS = ["lr classifier 0.05", "clip 0.5", "set all weight_decay=0.001", "accumulate 2"]


@pytest.fixture
def eager_random(monkeypatch):
    """Inductor draws Dropout's masks from an RNG of its own; the eager one makes the
    compiled run comparable with the eager run."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fallback_random", True)
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def compile_shown(t: Trainer) -> str:
    view = t.latest_snapshot().step_view
    return view.compile if view is not None else ""


def test_the_first_step_compiles_served_and_commands_do_not_recompile(tmp_path, eager_random):
    # batches of 32: 8 an epoch, all the same shape (a short last batch would recompile)
    t = Trainer(
        loader_spec(batch=32),
        RunConfig(run_dir=tmp_path / "c", compile=True, start_paused=True, log_every=0),
    )
    t.start()
    try:
        assert t.submit("step 1", source="test").result(timeout=10).ok
        # while the first step compiles, the run is served: its snapshot says so, and
        # commands queue for the boundary after that step
        wait_for(lambda: compile_shown(t) == "compiling", timeout=120)
        futures = [t.submit(c, source="test") for c in COMMANDS]
        assert all(f.result(timeout=600).ok for f in futures)
        wait_for(lambda: t.state == RunState.PAUSED)
        assert t.step == 1  # the commands were applied there
        graphs = counters["stats"]["unique_graphs"]
        assert graphs >= 1, t.latest_snapshot().log[1].text  # compiled: one graph at least
        assert t.submit("eval", source="test").result(timeout=60).ok  # eager, eval mode
        assert t.submit("step 6", source="test").result(timeout=10).ok
        wait_for(lambda: t.step == 7 and t.state == RunState.PAUSED, timeout=300)
        assert counters["stats"]["unique_graphs"] == graphs  # no recompile
        snap = t.latest_snapshot()
        wait_for(lambda: t.latest_snapshot().seq > snap.seq)
        view = t.latest_snapshot().step_view
        assert view is not None and view.compile == "compiled" and view.accumulate == 2
        log = [e.text for e in t.latest_snapshot().log]
        assert "compiling the model (torch.compile); the first step waits" in log
        assert any(line.startswith("model compiled: the first step took") for line in log)
    finally:
        t.close()


def test_a_compiled_run_trains_as_the_eager_one(eager_random):
    """The same commands at the same step (and an eval), compiled and eager: the same
    weights up to float noise (inductor's fused kernels). In this, the main thread:
    inductor's config (``fallback_random``) is the thread's own."""

    def run(compile: bool) -> dict[str, torch.Tensor]:
        t = sync_trainer(loader_spec(batch=32), compile=compile)
        t.step_now(1)
        for c in COMMANDS:
            assert t.apply_now(c).ok
        assert t.apply_now("eval").ok
        t.step_now(6)
        assert t.step == 7 and t._stepping.compile_state == ("compiled" if compile else "")
        t.close()
        return weights(t.model)

    compiled, eager = run(True), run(False)
    for name, w in eager.items():
        torch.testing.assert_close(compiled[name], w, rtol=1e-5, atol=1e-6)


def test_a_compile_that_fails_leaves_the_run_training_eagerly(eager_random, monkeypatch):
    """No working C compiler (inductor needs one): the first step is taken eagerly, the
    log and the snapshot say why, and the run is the eager run bit for bit."""
    import torch._inductor.config as inductor

    monkeypatch.setattr(inductor, "fx_graph_cache", False)  # no kernels from a cache
    monkeypatch.setattr(inductor.cpp, "cxx", ("/nonexistent/cc",))
    t = sync_trainer(loader_spec(batch=32), compile=True)
    t.step_now(5)
    assert t.state == RunState.RUNNING and t.step == 5
    view = t._build_snapshot().step_view
    assert view is not None and view.compile.startswith("failed: InductorError")
    assert view.compile.endswith("(eager)")
    log = [e.text for e in t.latest_snapshot().log]
    assert any(x.startswith("torch.compile failed (InductorError") for x in log), log
    assert log[-1].endswith("training without it")
    e = sync_trainer(loader_spec(batch=32))
    e.step_now(5)
    for name, w in weights(e.model).items():
        assert torch.equal(weights(t.model)[name], w), name
    t.close()
    e.close()
