"""The ``eval`` command: the eval_loader under ``model.eval()`` and ``torch.no_grad()``.

The RNG state is forked, so an eval (Dropout in a custom step, a random
augmentation) does not change the run: a replay without it draws the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from tuiconsole.engine.data import to_device
from tuiconsole.engine.snapshot import EvalPoint
from tuiconsole.errors import CommandError

# One rank's share of an eval under torchrun: (error, loss sum, correct, items, classify).
Local = tuple[str | None, float, int, int, bool]


def evaluate(
    model: nn.Module,
    criterion: Any,
    loader: Iterable[Any] | None,
    device: torch.device,
    step: int,
    training_step: Callable[..., Any] | None = None,
    reduce: Callable[[Local], tuple[float, int, int, bool]] | None = None,
) -> EvalPoint:
    """The mean loss over ``loader`` (and the accuracy when outputs are class scores
    and targets class indices). A loader that fails or is empty is a CommandError:
    the run goes on. ``reduce`` (torchrun): every rank's sums added up, so the mean is
    over the items of all ranks' shards."""
    if loader is None:
        raise CommandError("the script defines no eval_loader")
    devices = [device.index or 0] if device.type == "cuda" else []
    total = torch.zeros((), device=device, dtype=torch.float64)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    n_items = 0
    classify = True
    error = None
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            model.eval()
            for batch in loader:
                batch = to_device(batch, device)
                if training_step is not None:
                    loss = training_step(model, batch, criterion)
                    n = 1
                    classify = False
                else:
                    inputs, targets = batch
                    out = model(inputs)
                    loss = criterion(out, targets)
                    n = len(targets)
                    if (
                        classify
                        and out.dim() == 2
                        and targets.dim() == 1
                        and not targets.is_floating_point()
                    ):
                        correct += (out.argmax(dim=1) == targets).sum()
                    else:
                        classify = False
                total += loss.detach().double() * n
                n_items += n
    except Exception as exc:
        error = f"eval failed: {type(exc).__name__}: {exc}"
    finally:
        model.train()
    summed, hits = float(total), int(correct)
    if reduce is not None:  # every rank takes part, also one that failed (it says so)
        summed, hits, n_items, classify = reduce((error, summed, hits, n_items, classify))
    elif error is not None:
        raise CommandError(error)
    if n_items == 0:
        raise CommandError("eval_loader yielded no batches")
    return EvalPoint(step, summed / n_items, hits / n_items if classify else None)


def eval_text(point: EvalPoint) -> str:
    """The eval command's result line."""
    acc = f", accuracy {point.accuracy:.1%}" if point.accuracy is not None else ""
    return f"eval at step {point.step}: loss {point.loss:.4g}{acc}"
