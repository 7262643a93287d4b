"""A run on several processes (torchrun / DDP): every rank steps, rank 0 is the run.

torchrun starts one process per rank with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``
in its environment. Each process trains the same model on its own shard of the data;
DDP averages the gradients inside ``backward()``. Rank 0 alone has a front-end (the
console's socket, the journal, metrics, checkpoints); the others only train.

Commands reach rank 0 only, so they are applied at an agreed step: the **tick**, on a
gloo group of its own (never on the training stream, never a CUDA sync). Its cheap part
(``Coordinator.flags``) is one all_reduce of three ints: whether this step's loss is
non-finite on some rank (on the CPU, where the loss is checked every step, so that every
rank skips that update: DDP's backward is a collective no rank may skip alone), whether
some rank has something to say (rank 0 commands; any rank a stop its signals asked for, or
a non-finite loss it found later), and rank 0's step of the next tick. Only when a rank
has something to say do the ranks exchange it (``Coordinator.tick``: one
``all_gather_object``) at the next step boundary; every rank then applies the same
commands in the same order at the same step, and the ranks compare a digest of their
optimizers. On the CPU the flags are exchanged every step (with the loss check they share);
elsewhere every K steps, K chosen by rank 0 from a time budget (the tick's cost against the
step's); while no step may be taken (paused, finished) every few hundredths of a second.

A collective on a rank that died fails at once (its sockets closed) and one on a rank
that hangs times out after ``TUICONSOLE_DIST_TIMEOUT`` seconds (300): the others stop
with a message naming the rank where it can be told (a peer's pid on this host).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from tuiconsole.engine import commands as C
from tuiconsole.engine.snapshot import EvalPoint
from tuiconsole.errors import CommandError, ScriptError, TuiconsoleError

TIMEOUT_ENV = "TUICONSOLE_DIST_TIMEOUT"
BACKEND_ENV = "TUICONSOLE_DIST_BACKEND"  # the default group's backend (nccl on CUDA, else gloo)
# A folder: each rank writes rank<N>.json there as it ends (its optimizer, a digest of its
# weights and state, the commands it applied and at which step): to check that ranks agree.
DUMP_ENV = "TUICONSOLE_RANK_DUMP"
DEFAULT_TIMEOUT_S = 300.0
TICK_BUDGET = 0.002  # of each step's time, at most, spent in ticks
MAX_TICK_EVERY_S = 0.25  # a command waits about this long for its tick, at most...
LATENCY_BUDGET = 0.01  # ...where ticks that often cost at most this share of the time
IDLE_TICK_S = 0.05  # between ticks while no step may be taken


class PeerLost(TuiconsoleError):
    """A collective with the other ranks failed: one died, hung or closed its group."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in a job: torchrun's RANK, WORLD_SIZE and LOCAL_RANK."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0


def env_ranks() -> Ranks | None:
    """The job this process is a rank of (torchrun's environment), or None for one process."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return None
        return Ranks(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    except (KeyError, ValueError):
        raise TuiconsoleError(
            "WORLD_SIZE is set but RANK / LOCAL_RANK are not numbers: start the ranks with "
            "torchrun (python -m torch.distributed.run)"
        ) from None


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise TuiconsoleError(f"{TIMEOUT_ENV}={text!r}: must be a number of seconds") from None
    if not value > 0:
        raise TuiconsoleError(f"{TIMEOUT_ENV}={text!r}: must be > 0")
    return value


def rank_device(ranks: Ranks, wanted: str | None) -> torch.device:
    """Each rank's device: cuda:LOCAL_RANK where CUDA is (or was asked for), else the CPU."""
    if wanted not in (None, "auto", "cuda") and wanted != f"cuda:{ranks.local_rank}":
        if wanted == "cpu":
            return torch.device("cpu")
        raise TuiconsoleError(
            f"--device {wanted}: under torchrun each rank takes cuda:LOCAL_RANK (or cpu)"
        )
    if wanted == "cuda" or (wanted in (None, "auto") and torch.cuda.is_available()):
        # more ranks than GPUs (a check on one GPU) share them; nccl refuses that, gloo
        # (TUICONSOLE_DIST_BACKEND=gloo) does not
        device = torch.device("cuda", ranks.local_rank % max(1, torch.cuda.device_count()))
        torch.cuda.set_device(device)
        return device
    return torch.device("cpu")


_made_here = False  # the default group was made by join(): ours to destroy


def join(ranks: Ranks, device: torch.device) -> bool:
    """The default process group from torchrun's environment (nccl on CUDA, gloo on the
    CPU), unless the script made it; True when tuiconsole made it."""
    global _made_here
    if dist.is_initialized():
        if dist.get_world_size() != ranks.world_size:
            raise TuiconsoleError(
                f"the process group has {dist.get_world_size()} ranks but WORLD_SIZE is "
                f"{ranks.world_size}"
            )
        return _made_here
    _made_here = True
    backend = os.environ.get(BACKEND_ENV) or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(
        backend,
        timeout=datetime.timedelta(seconds=timeout_s()),
        device_id=device if device.type == "cuda" else None,
    )
    return True


def join_from_env(wanted_device: str | None) -> None:
    """Before a contract script loads under torchrun: the process group, so the script
    may ask torch.distributed its rank (the trainer joins the same group)."""
    ranks = env_ranks()
    if ranks is not None:
        join(ranks, rank_device(ranks, wanted_device))


# --------------------------------------------------------------------------- model and data


def unwrap(model: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(the module, its DDP wrapper if the script wrapped it); FSDP and DTensor refused."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.module, model
    refuse_sharded(model)
    return model, None


def refuse_sharded(model: nn.Module) -> None:
    """FSDP (1 and 2) and tensor-parallel (DTensor) parameters: one line, refused."""
    kinds = {type(m).__name__ for m in model.modules()}
    if any("FullyShardedDataParallel" in k or k.startswith("FSDP") for k in kinds):
        raise ScriptError(
            "FSDP is not supported: each rank holds a shard of the parameters and of the "
            "optimizer state, which `split` and `rebuild` cannot act on; use DDP"
        )
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - every supported torch has it
        return
    if any(isinstance(p, DTensor) for p in model.parameters()):
        raise ScriptError("tensor / model parallel parameters (DTensor) are not supported; use DDP")


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if not any(p.requires_grad for p in model.parameters()):
        return model
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def shard(loader: Any, ranks: Ranks, seed: int, *, train: bool) -> tuple[Any, str | None]:
    """``loader`` with each rank's own share of the data (a DistributedSampler in a copy
    of a DataLoader; every world_size-th batch of a list), unless it shards already; and
    a note for the log, if any."""
    from torch.utils.data import (
        DataLoader,
        DistributedSampler,
        IterableDataset,
        RandomSampler,
        SequentialSampler,
    )

    what = "train_loader" if train else "eval_loader"
    if loader is None:
        return None, None
    if isinstance(loader, list | tuple):  # batches: every world_size-th one is this rank's
        mine = loader[ranks.rank :: ranks.world_size]
        if train:  # as many for every rank: DDP's all-reduce needs each rank to step
            mine = mine[: len(loader) // ranks.world_size]
        if mine:
            return type(loader)(mine), None
        return loader, f"{what} has fewer batches than ranks: every rank iterates all of it"
    if not isinstance(loader, DataLoader):
        return loader, (
            f"{what} is not a DataLoader: every rank iterates all of it (shard it yourself, "
            "by RANK, if it should be split)"
        )
    if isinstance(loader.sampler, DistributedSampler):
        return loader, None  # the script shards: set_epoch each epoch (data.py)
    if isinstance(loader.dataset, IterableDataset):
        return loader, f"{what} reads an IterableDataset: it must shard itself by RANK"
    if not isinstance(loader.sampler, RandomSampler | SequentialSampler) or (
        loader.batch_size is None
    ):
        return loader, (
            f"{what} has a sampler of its own ({type(loader.sampler).__name__}): left as it "
            "is, so each rank sees what it yields"
        )
    shuffle = isinstance(loader.sampler, RandomSampler)
    sampler: DistributedSampler[Any] = DistributedSampler(
        loader.dataset,
        num_replicas=ranks.world_size,
        rank=ranks.rank,
        shuffle=shuffle,
        seed=seed,
        drop_last=loader.drop_last if train else False,
    )
    extra: dict[str, Any] = {}
    if loader.num_workers > 0:
        extra = {
            "prefetch_factor": loader.prefetch_factor,
            "persistent_workers": loader.persistent_workers,
        }
    sharded = DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context,
        generator=loader.generator,
        **extra,
    )
    return sharded, None


# --------------------------------------------------------------------------- the ticks


@dataclass
class Report:
    """What a rank says in a tick besides rank 0's commands."""

    stop: str | None = None  # a stop asked of this rank (a signal): its source
    nan: tuple[int, float] | None = None  # the first non-finite loss it found: step, value


@dataclass
class Tick:
    """What every rank got from one tick: rank 0's commands, and every rank's report."""

    commands: list[tuple[C.Command, str]]
    reports: list[Report]


@dataclass
class _Timing:
    step_s: float = 0.0  # mean step time between ticks (rank 0)
    tick_s: float = 0.0  # mean tick cost
    at: float = field(default_factory=time.monotonic)
    step: int = 0


def digest(optimizer: torch.optim.Optimizer, model: nn.Module) -> str:
    """The optimizer's class and every group's hyper-parameters and members, hashed."""
    index = {id(p): i for i, p in enumerate(model.parameters())}
    parts = [type(optimizer).__name__]
    for g in optimizer.param_groups:
        hp = sorted((k, repr(v)) for k, v in g.items() if k != "params")
        parts.append(repr((hp, [index.get(id(p), -1) for p in g["params"]])))
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class Coordinator:
    """This rank's side of the ticks (see the module docstring)."""

    def __init__(self, ranks: Ranks, made_group: bool = False, files: bool = True) -> None:
        self.ranks = ranks
        self.made_group = made_group  # the default group is ours to destroy at the end
        self.group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s()))
        self.next_tick = 1
        self.every = 1
        self._timing = _Timing()
        self._flags = torch.zeros(3, dtype=torch.int64)
        self.exchange_due = False  # a rank asked for an exchange at the next boundary
        self.broken: str | None = None  # why the ranks can no longer agree
        self.applied: list[tuple[int, str]] = []  # (step, command) as this rank applied them
        self.peers: list[tuple[str, int]] = []
        hello = self.exchange((socket.gethostname(), os.getpid(), files))
        self.peers = [(host, pid) for host, pid, _ in hello]
        self.leader_files = bool(hello[0][2])  # rank 0 keeps files: checkpoints gather

    @property
    def leader(self) -> bool:
        return self.ranks.leader

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    def due(self, step: int) -> bool:
        return self.broken is None and step >= self.next_tick

    def exchange(self, mine: Any) -> list[Any]:
        """Every rank's ``mine``, in rank order (one all_gather_object on the gloo group)."""
        got: list[Any] = [None] * self.ranks.world_size
        try:
            dist.all_gather_object(got, mine, group=self.group)
        except Exception as exc:
            raise self.lost(exc) from None
        return got

    def flags(
        self, step: int, *, skip: bool = False, say: bool = False, idle: bool = False
    ) -> bool:
        """The cheap part of a tick, one all_reduce (MAX) of three ints on the gloo group:
        ``skip`` (this step's loss is not finite here: every rank skips the update), ``say``
        (this rank has something for an exchange: rank 0 commands, any rank a stop or a
        non-finite loss it found) and rank 0's step of the next tick. Returns whether any
        rank said ``skip``; sets ``exchange_due`` when any rank said ``say``."""
        started = time.monotonic()
        f = self._flags
        f[0], f[1] = int(skip), int(say)
        f[2] = step + (1 if idle else self._choose_every(step, started)) if self.leader else 0
        try:
            dist.all_reduce(f, op=dist.ReduceOp.MAX, group=self.group)
        except Exception as exc:
            raise self.lost(exc) from None
        self.next_tick = int(f[2])
        if f[1]:
            self.exchange_due = True
        if self.leader and not idle:
            took = time.monotonic() - started
            t = self._timing
            t.tick_s = took if t.tick_s == 0 else 0.8 * t.tick_s + 0.2 * took
            t.at, t.step = time.monotonic(), step
        return bool(f[0])

    def tick(self, commands: list[tuple[C.Command, str]], report: Report) -> Tick:
        """The exchange of a tick a rank asked for (``flags(say=True)``): rank 0's
        ``commands`` (the others pass none) and this rank's ``report`` out, everyone's in
        (one all_gather_object)."""
        self.exchange_due = False
        mine: dict[str, Any] = {"report": report}
        if self.leader:
            mine["commands"] = commands
        got = self.exchange(mine)
        return Tick(list(got[0]["commands"]), [g["report"] for g in got])

    def _choose_every(self, step: int, now: float) -> int:
        """K: ticks cost at most TICK_BUDGET of the time; they come every
        MAX_TICK_EVERY_S where that costs at most LATENCY_BUDGET."""
        t = self._timing
        if step > t.step:
            took = (now - t.at) / (step - t.step)
            t.step_s = took if t.step_s == 0 else 0.8 * t.step_s + 0.2 * took
        if t.step_s <= 0 or t.tick_s <= 0:
            return 1
        cheap = max(1, math.ceil(t.tick_s / (TICK_BUDGET * t.step_s)))
        soon = max(1, int(MAX_TICK_EVERY_S / t.step_s))
        if soon < cheap and t.tick_s / (soon * t.step_s) <= LATENCY_BUDGET:
            cheap = soon
        self.every = cheap
        return self.every

    def agree(self, optimizer: torch.optim.Optimizer, model: nn.Module, after: str) -> None:
        """After commands were applied: every rank's optimizer digest is the same, or
        PeerLost names the ranks that differ from rank 0."""
        digests = self.exchange(digest(optimizer, model))
        differ = [r for r, d in enumerate(digests) if d != digests[0]]
        if differ:
            ranks = ", ".join(str(r) for r in differ)
            raise Disagreement(
                f"the ranks disagree after {after}: the optimizer of rank(s) {ranks} differs "
                "from rank 0's (its class, hyper-parameters or groups); the run stops"
            )

    def lost(self, exc: BaseException) -> PeerLost:
        """``exc`` from a collective, said as which rank went away (where it can be told)."""
        host = socket.gethostname()
        gone = []
        for _ in range(10):  # a peer that just died may take a moment to be seen
            gone = [
                f"rank {r} (pid {pid})"
                for r, (peer_host, pid) in enumerate(self.peers)
                if r != self.ranks.rank and peer_host == host and not _alive(pid)
            ]
            if gone or not self.peers:
                break
            time.sleep(0.05)
        text = " ".join(str(exc).split())[:200]
        if gone:
            why = f"{', '.join(gone)} exited"
        elif "timeout" in text.lower() or "timed out" in text.lower():
            why = f"a rank did not answer within {timeout_s():g} s ({TIMEOUT_ENV})"
        else:
            why = "another rank failed or closed its process group"
        self.broken = why
        return PeerLost(f"{why}: {type(exc).__name__}: {text}")

    def close(self) -> None:
        """This rank is done with the others: its group is destroyed (and the default
        one, if tuiconsole made it), so a peer still waiting in a collective with it
        fails at once instead of at its timeout."""
        if self.broken is None:
            self.broken = "this rank left the job"
        if not dist.is_initialized():
            return
        with contextlib.suppress(Exception):  # leaving anyway
            dist.destroy_process_group(self.group)
        if self.made_group:
            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _alive(pid: int) -> bool:
    """A process of this host that has not exited (a zombie has: its parent just did not
    reap it yet, as torchrun's agent has not the moment a rank is killed)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


class Disagreement(PeerLost):
    """The ranks' optimizers differ after a command."""


def collective_error(exc: BaseException) -> bool:
    """Did ``exc`` come from a collective with the other ranks (DDP's all-reduce)?"""
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        word in text for word in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset")
    )


def reduce_eval(
    coordinator: Coordinator, local: tuple[str | None, float, int, int, bool]
) -> tuple[float, int, int, bool]:
    """Sum every rank's eval (error, loss sum, correct, items, classify): a mean over all
    the items of all ranks; an error on any rank is the eval's error, naming it."""
    got = coordinator.exchange(local)
    for r, (error, *_rest) in enumerate(got):
        if error is not None:
            raise CommandError(f"{error} (on rank {r})")
    total = math.fsum(g[1] for g in got)
    return total, sum(g[2] for g in got), sum(g[3] for g in got), all(g[4] for g in got)


def mean_over_ranks(
    coordinator: Coordinator, point: EvalPoint | None, error: str | None, step: int
) -> EvalPoint:
    """An own loop's eval under torchrun: each rank's ``evaluate()`` result, the mean
    over the ranks (each rank's counts the same); an error on any rank is the eval's."""
    mine = None if point is None else (point.loss, point.accuracy)
    got = coordinator.exchange((error, mine))
    for r, (err, _) in enumerate(got):
        if err is not None:
            raise CommandError(f"{err} (on rank {r})")
    losses = [g[1][0] for g in got]
    accs = [g[1][1] for g in got]
    acc = None if any(a is None for a in accs) else sum(accs) / len(accs)
    return EvalPoint(step, sum(losses) / len(losses), acc)


def rank_states(coordinator: Coordinator, mine: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's RNG states and data position, for rank 0's checkpoint."""
    return list(coordinator.exchange(mine))


def tensor_digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def dump(
    coordinator: Coordinator,
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    step: int,
    state: str,
) -> None:
    """This rank's end as DUMP_ENV asks (a debugging aid, and what the tests compare)."""
    import json
    from pathlib import Path

    folder = os.environ.get(DUMP_ENV)
    if not folder:
        return
    groups = [
        {k: v for k, v in g.items() if k != "params"} | {"n_params": len(g["params"])}
        for g in optimizer.param_groups
    ]
    states = [
        v
        for s in optimizer.state.values()
        for k, v in sorted(s.items())
        if isinstance(v, torch.Tensor) and k != "step"
    ]
    record = {
        "rank": coordinator.ranks.rank,
        "world_size": coordinator.world_size,
        "step": step,
        "state": state,
        "optimizer": type(optimizer).__name__,
        "groups": groups,
        "weights": tensor_digest(model.state_dict().values()),
        "optimizer_state": tensor_digest(states),
        "applied": coordinator.applied,
        "tick_every": coordinator.every,
    }
    path = Path(folder) / f"rank{coordinator.ranks.rank}.json"
    path.write_text(json.dumps(record, default=repr, indent=1))


def world_note(ranks: Ranks, device: torch.device, notes: Iterable[str]) -> str:
    text = f"rank 0 of {ranks.world_size} (torchrun, {device.type}; DDP over all ranks)"
    rest = "; ".join(notes)
    return f"{text}; {rest}" if rest else text
