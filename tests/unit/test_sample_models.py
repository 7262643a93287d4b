"""Each sample is a valid script whose groups follow the seed, and it learns."""

from pathlib import Path

import pytest
import torch

from tuiconsole.engine.groups import group_names
from tuiconsole.engine.trainer import RunConfig, Trainer
from tuiconsole.script import load_script

SAMPLES = Path(__file__).resolve().parents[2] / "sample_models"


@pytest.mark.parametrize(
    "name, groups, optimizer",
    [
        ("vgg", ["features", "classifier"], torch.optim.SGD),
        ("mlp", ["body", "head"], torch.optim.SGD),
        ("resnet_adam", ["group0", "head"], torch.optim.Adam),
    ],
)
def test_sample_loads_with_seed_style_groups(name, groups, optimizer):
    spec = load_script(SAMPLES / f"{name}.py")
    trainer = Trainer(spec, RunConfig(max_steps=1))
    assert group_names(trainer.optimizer) == groups
    assert type(spec.optimizer) is optimizer
    assert spec.eval_loader is not None


def test_deep_sample_has_100_modules_and_a_per_step_scheduler():
    spec = load_script(SAMPLES / "resnet_adam.py")
    assert len(list(spec.model.modules())) >= 100
    assert spec.scheduler is not None and spec.scheduler_interval == "step"


def test_mlp_learns():
    spec = load_script(SAMPLES / "mlp.py")
    t = Trainer(spec, RunConfig(max_steps=300, log_every=0))
    assert t.step_now(300) == 300
    t.close()
    first = [v for s, v in t._losses.recent][:20]
    last = [v for s, v in t._losses.recent][-20:]
    assert sum(last) / 20 < 0.5 * sum(first) / 20


@pytest.mark.slow  # bf16 on a CPU without bf16 units: ~1 s a step on a loaded 2-core box
def test_gpu_server_sample_trains_in_bf16_with_clipping_and_accumulation():
    spec = load_script(SAMPLES / "gpu_server.py")
    assert (spec.amp, spec.grad_clip, spec.accumulate, spec.compile) == ("bf16", 1.0, 4, False)
    t = Trainer(spec, RunConfig(max_steps=3, log_every=0, device="cpu"))
    assert t.step_now(3) == 3
    assert t.data_position()["epoch_batches"] == 12  # 4 micro-batches a step
    view = t._build_snapshot().step_view
    assert view is not None and (view.amp, view.grad_clip, view.accumulate) == ("bf16", 1.0, 4)
    assert view.clip_steps == 3 and view.grad_norm is not None
    assert type(spec.optimizer) is torch.optim.AdamW and group_names(t.optimizer) == [
        "weight_decay:0.05",
        "weight_decay:0",
    ]
    t.close()
