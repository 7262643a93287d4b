"""No host sync per step on an accelerator, checked with torch's sync debug mode.

    python benchmarks/gpu_sync.py cuda

300 steps of vgg (SGD) and resnet_adam (Adam) with every read disabled (no log
lines, no snapshot reader): torch warns on each synchronizing call it detects.
"""

import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tuiconsole.engine.trainer import RunConfig, Trainer  # noqa: E402
from tuiconsole.script import load_script  # noqa: E402

dev = sys.argv[1]
for name in ("vgg", "resnet_adam"):
    spec = load_script(f"sample_models/{name}.py")
    t = Trainer(spec, RunConfig(max_steps=10**6, log_every=0, snapshot_interval=1e9, device=dev))
    t.prepare()
    t._snapshot_wanted = False
    t.step_now(5)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        t.step_now(300)
    if dev.startswith("cuda"):
        torch.cuda.set_sync_debug_mode(0)
    syncs = [x for x in w if "synchroniz" in str(x.message)]
    print(
        f"{name}: steps {t.step} epoch {t.epoch} device {t.device}: {len(syncs)} sync warnings in 300 steps"
    )
    for x in syncs[:3]:
        print("   ", x.filename, x.lineno, str(x.message)[:160])
    t._flush_losses()
    print(f"   loss last {t._losses.last:.4f}, state {t.state.value}")
    t.close()
