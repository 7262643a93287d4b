"""The ticks between ranks add no host sync per step: torch's sync debug mode, 2 ranks.

    torchrun --standalone --nproc-per-node 2 benchmarks/gpu_ddp_sync.py cuda [STEPS]

Each rank trains vgg under DDP twice, warned on every synchronizing call: a bare DDP
loop, then the engine's loop (its ticks, its NaN policy on an accelerator: the losses
read at a flush, not per step). Rank 0 prints both counts; the engine must add 0. On a
machine with one GPU both ranks share it: set TUICONSOLE_DIST_BACKEND=gloo (nccl refuses
two ranks on one device; gloo's own copies of CUDA tensors are then in both counts).
``cpu`` is a dry run of the script.
"""

import os
import sys
import warnings
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.common import ddp_steps  # noqa: E402
from tuiconsole.engine.trainer import RunConfig, Trainer  # noqa: E402
from tuiconsole.script import load_script  # noqa: E402

dev = sys.argv[1] if len(sys.argv) > 1 else "cuda"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 200
rank = int(os.environ["RANK"])


def counted(step: object, n: int) -> int:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        for _ in range(n):
            step()  # type: ignore[operator]
    if dev.startswith("cuda"):
        torch.cuda.set_sync_debug_mode(0)
    return len([x for x in w if "synchroniz" in str(x.message)])


spec = load_script("sample_models/vgg.py")
t = Trainer(spec, RunConfig(max_steps=10**6, log_every=0, snapshot_interval=1e9, device=dev))
t.prepare()
t._snapshot_wanted = False
bare_step, engine_step = ddp_steps(
    t, [tuple(x.to(t.device) for x in b) for _, b in zip(range(8), spec.train_loader, strict=False)]
)


for _ in range(5):
    bare_step()
    engine_step()
bare = counted(bare_step, steps)
engine = counted(engine_step, steps)
if rank == 0:
    added = engine - bare
    print(
        f"rank 0 on {t.device}: {steps} steps, sync warnings bare DDP {bare}, engine {engine}: "
        f"the engine adds {added} ({'pass' if added <= 0 else 'FAIL'}); ticks every "
        f"{t._dist.every if t._dist else '-'} steps"
    )
t._dist.close() if t._dist else None
dist.destroy_process_group() if dist.is_initialized() else None
