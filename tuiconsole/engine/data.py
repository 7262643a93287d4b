"""Where the training data is: the epoch's iterator, batches taken, RNG states.

A checkpoint holds the RNG states (torch, Python, numpy and the loader's own
``generator``) from just before the current epoch's ``iter(train_loader)`` and
how many batches of that epoch were taken (:meth:`EpochData.position`). Resuming
re-creates the iterator under those states (same shuffle), skips those batches
(:meth:`EpochData.restore`), then the caller restores the RNG states of the
checkpoint itself, so a CPU run continues bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from tuiconsole.errors import TuiconsoleError


class EmptyEpoch(TuiconsoleError):
    """train_loader yielded no batches for a whole epoch."""


# --------------------------------------------------------------------------- RNG


def loader_generators(loader: object) -> list[torch.Generator]:
    """The torch.Generators a train_loader may shuffle with besides the global RNG.

    ``DataLoader(generator=g)`` draws each epoch's order (and its workers' seed) from
    ``g``, and a sampler may hold its own; so may a hand-written loader (``.generator``).
    """
    found: dict[int, torch.Generator] = {}
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (loader, getattr(loader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator):
            found.setdefault(id(g), g)
    return list(found.values())


def rng_state(generators: Sequence[torch.Generator] = ()) -> dict[str, Any]:
    """Every RNG a training step may draw from, as weights_only-loadable values:
    torch's global RNG (and CUDA's), Python's, numpy's, and ``generators`` (the loader's)."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generators:
        state["loader"] = [g.get_state() for g in generators]
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return state
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    assert isinstance(keys, np.ndarray)  # legacy=True: the (kind, keys, ...) tuple
    state["numpy"] = (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    return state


def set_rng_state(state: dict[str, Any], generators: Sequence[torch.Generator] = ()) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    loader = state.get("loader", [])
    if len(loader) == len(generators):  # else the script changed (its sha256 is warned on)
        for g, saved in zip(generators, loader, strict=True):
            g.set_state(saved)
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))


# --------------------------------------------------------------------------- batches


def to_device(batch: Any, device: torch.device) -> Any:
    """A batch (tensors, tuples/lists/dicts of them) on ``device``; anything else as is."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, tuple | list):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def set_epoch(loader: object, epoch: int) -> None:
    """A DistributedSampler shuffles by seed + epoch: tell it the epoch (torchrun)."""
    from torch.utils.data import DistributedSampler

    sampler = getattr(loader, "sampler", None)
    if isinstance(sampler, DistributedSampler):
        sampler.set_epoch(epoch)


# What EpochData.take returns when the epoch ran out (None is a valid batch).
END_OF_EPOCH: Any = object()


def _length(loader: Iterable[Any]) -> int | None:
    """len(loader) where it has one; a loader whose len() raises has none."""
    try:
        n = len(loader)  # type: ignore[arg-type]
    except Exception:  # no __len__, an IterableDataset's DataLoader, a failing __len__
        return None
    return n if isinstance(n, int) and n > 0 else None


class EpochData:
    """The train_loader's current epoch: its iterator, batches taken, the RNGs before it."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.generators = loader_generators(loader)
        self._iter: Iterator[Any] | None = None
        self.batches = 0  # batches taken from the current epoch's iterator
        self._rng: dict[str, Any] | None = None  # the RNGs before that iter()
        # Batches in an epoch, for the ETA: len(train_loader), else those of the last
        # epoch that ran out (None until one did: a generator, an IterableDataset).
        self.length: int | None = _length(loader)

    @property
    def started(self) -> bool:
        """A batch of the current epoch was taken (and the epoch has not ended)."""
        return self._iter is not None and self.batches > 0

    def take(self, epoch: int) -> Any:
        """The next batch, or END_OF_EPOCH once (the next call starts a new epoch).

        ``epoch`` (0-based) is only for the message of an epoch without batches.
        """
        if self._iter is None:
            # Once per epoch: the RNG state the loader's shuffle draws from, so
            # a checkpoint can re-create this epoch's order on resume.
            self._rng = rng_state(self.generators)
            set_epoch(self.loader, epoch)
            self._iter = iter(self.loader)
            self.batches = 0
        try:
            batch = next(self._iter)
        except StopIteration:
            if self.batches == 0:
                raise EmptyEpoch(
                    f"train_loader yielded no batches in epoch {epoch + 1} (a "
                    "generator or one-shot iterator is used up after one epoch; use a "
                    "list or a DataLoader)"
                ) from None
            self._iter = None
            self.length = self.batches
            return END_OF_EPOCH
        self.batches += 1
        return batch

    def hold_end(self) -> None:
        """The epoch ran out in the middle of a step (gradient accumulation): keep its
        position until that step is done, and end the epoch at the next :meth:`take`.

        So a checkpoint at the step boundary says "all of this epoch's batches taken"
        (not "between epochs", which would repeat the epoch on resume), as it does after
        an epoch's last batch without accumulation.
        """
        self._iter = iter(())

    def position(self) -> dict[str, Any]:
        """Where the loader is (a checkpoint's ``data``): batches taken in this epoch,
        and the RNGs before its iter(); both None between epochs."""
        if self._iter is None:
            return {"epoch_batches": None, "epoch_rng": None}
        return {"epoch_batches": self.batches, "epoch_rng": self._rng}

    def rewind(self) -> None:
        """Forget the epoch in progress (a rollback restores another position next)."""
        self._iter, self._rng, self.batches = None, None, 0

    def restore(self, data: dict[str, Any], path: Path, epoch: int) -> int | None:
        """Resume a checkpoint's ``data`` position: the same shuffle for the epoch it was
        in, its taken batches skipped. Returns how many were taken (None: between epochs)."""
        taken: int | None = data.get("epoch_batches")
        if taken is None:
            return None
        epoch_rng = data["epoch_rng"]
        if isinstance(epoch_rng, torch.Tensor):  # an older checkpoint: torch's RNG only
            epoch_rng = {"torch": epoch_rng}
        set_rng_state(epoch_rng, self.generators)
        self._rng = epoch_rng
        set_epoch(self.loader, epoch)
        self._iter = iter(self.loader)
        for i in range(taken):
            try:
                next(self._iter)
            except StopIteration:
                raise TuiconsoleError(
                    f"{path}: the checkpoint is {taken} batches into epoch "
                    f"{epoch + 1}, but train_loader now has only {i}"
                ) from None
        self.batches = taken
        return taken
