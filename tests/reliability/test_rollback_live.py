"""``rollback`` sent to the loop thread of a run on a shuffled DataLoader, mid-epoch,
with a per-group LambdaLR and a split: it goes on exactly as a run that never left."""

from __future__ import annotations

from tests.reliability.helpers import loader_spec, sync_trainer
from tests.reliability.test_resume import assert_same_run
from tests.unit.models import ThreadDriver
from tuiconsole.engine.snapshot import RunState
from tuiconsole.engine.trainer import RunConfig, Trainer


def test_rollback_on_the_running_trainer_continues_as_a_straight_run(tmp_path):
    spec = loader_spec("sgd", "lambda")
    t = Trainer(spec, RunConfig(run_dir=tmp_path / "a", start_paused=True, log_every=0))
    d = ThreadDriver(t.start())
    try:
        d.steps(15)
        assert d.cmd("split fc1 classifier.0 lr=0.03").ok
        d.steps(10)  # step 25: 3 batches into epoch 3
        assert d.cmd("checkpoint").ok
        assert d.cmd("lr all *3").ok
        d.steps(20)
        assert d.cmd("resume").ok
        r = d.cmd("rollback")  # refused while it trains: nothing changed
        assert not r.ok and "pause the run first" in r.message
        d.cmd("pause")
        r = d.cmd("rollback")
        assert r.ok and "to step 25" in r.message and "3 batch(es) into epoch 3" in r.message
        assert t.state == RunState.PAUSED and t.step == 25
        d.steps(30)
        b = sync_trainer(loader_spec("sgd", "lambda"))
        b.step_now(15)
        assert b.apply_now("split fc1 classifier.0 lr=0.03").ok
        b.step_now(40)
        assert_same_run(t, b)
        assert [g["name"] for g in t.optimizer.param_groups] == ["features", "classifier", "fc1"]
    finally:
        t.close()
