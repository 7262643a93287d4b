"""No host sync per step on an accelerator, checked with torch's sync debug mode.

    python benchmarks/gpu_sync.py cuda [MODEL...]

300 steps of vgg (SGD) and resnet_adam (Adam) with every read disabled (no log
lines, no snapshot reader): torch warns on each synchronizing call it detects.
``vgg+step`` (named) is vgg with the training step GPU users run (engine/step.py): amp bf16,
clipping to 1.0 and 4 micro-batches a step (75 optimizer steps: 300 micro-batches);
the grad norm and the clipped count stay on the device. After the steps, one snapshot
is built (it reads them) and the loop checks that it did. ``+signals`` (e.g.
``vgg+signals``, ``resnet_adam+step+signals``) measures the per-group signals
(engine/signals.py) at every step instead of one in K, and checks the snapshot read them.
"""

import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tuiconsole.engine.trainer import RunConfig, Trainer  # noqa: E402
from tuiconsole.script import load_script  # noqa: E402

dev = sys.argv[1]
# amp + clip + accumulation: the step of engine/step.py
STEP_FEATURES = {"amp": "bf16", "grad_clip": 1.0, "accumulate": 4}
for name in sys.argv[2:] or ("vgg", "resnet_adam"):  # "none": only the steered loop below
    if name == "none":
        continue
    script, *extras = name.split("+")
    featured = "step" in extras
    spec = load_script(f"sample_models/{script}.py")
    features: dict = dict(STEP_FEATURES) if featured else {}
    if "signals" in extras:
        features["signal_every"] = 1  # every optimizer step measured
    steps = 300 // (4 if featured else 1)
    t = Trainer(
        spec,
        RunConfig(max_steps=10**6, log_every=0, snapshot_interval=1e9, device=dev, **features),
    )
    t.prepare()
    t._snapshot_wanted = False
    t.step_now(5)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t.step_now(steps)
    if dev.startswith("cuda"):
        torch.cuda.set_sync_debug_mode(0)
    syncs = [x for x in w if "synchroniz" in str(x.message)]
    print(
        f"{name}: steps {t.step} epoch {t.epoch} device {t.device}: {len(syncs)} sync "
        f"warnings in {steps} steps"
    )
    for x in syncs[:3]:
        print("   ", x.filename, x.lineno, str(x.message)[:160])
    t._flush_losses()
    print(f"   loss last {t._losses.last:.4f}, state {t.state.value}")
    # The telemetry a snapshot shows (the steps above timed with CUDA events): its
    # view reads the events' timings, the allocator's counters and NVML; no sync either.
    meter = t._record.meter
    if dev.startswith("cuda"):
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(50):
            tel = meter.view(50.0, t._record._progress(t._facts()))  # 50 steps/s: any rate
    if dev.startswith("cuda"):
        torch.cuda.set_sync_debug_mode(0)
    syncs = [x for x in w if "synchroniz" in str(x.message)]
    print(f"   telemetry view: {len(syncs)} sync warnings in 50 views (K={meter.every}): {tel}")
    if featured:  # what was kept on the device, read once now
        v = t._build_snapshot().step_view
        assert v is not None and v.clip_steps == t.step and v.grad_norm is not None
        print(
            f"   {v.amp}, accumulate {v.accumulate}: grad norm {v.grad_norm:.3g}, clipped "
            f"{v.clipped} of {v.clip_steps} steps"
        )
    if "signals" in extras:  # what was kept on the device, read once now
        signals = t._build_snapshot().signals
        assert signals and all(g.step == t.step and g.grad_norm is not None for g in signals)
        print(
            "   signals: "
            + ", ".join(
                f"{g.name} grad {g.grad_norm:.3g} ratio {g.update_ratio:.2g} adam {g.adam_step}"
                for g in signals
            )
        )
    t.close()

# The library API: a loop of its own with steer.step(loss) at its boundary.
from torch import nn  # noqa: E402

from tuiconsole.library import steer as make_steer  # noqa: E402

spec = load_script("sample_models/vgg.py")
model = spec.model.to(dev)
opt = spec.optimizer
steer = make_steer(model, opt, listen=False, log_every=10**9, run_dir=tempfile.mkdtemp())
steer.session.snapshot()  # nobody reads snapshots after this: none is built
batches = [(x.to(dev), y.to(dev)) for x, y in list(spec.train_loader)[:8]]


def steps(n: int) -> None:
    for i in range(n):
        x, y = batches[i % len(batches)]
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        steer.step(loss)


steps(5)
if dev.startswith("cuda"):
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    steps(300)
if dev.startswith("cuda"):
    torch.cuda.set_sync_debug_mode(0)
syncs = [x for x in w if "synchroniz" in str(x.message)]
print(f"steer (own loop, vgg): steps {steer.steps}: {len(syncs)} sync warnings in 300 steps")
for x in syncs[:3]:
    print("   ", x.filename, x.lineno, str(x.message)[:160])
steer.close()
