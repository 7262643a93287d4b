"""Steer a PyTorch Lightning fit: ``Trainer(callbacks=[TuiconsoleCallback()])``.

::

    from tuiconsole.lightning import TuiconsoleCallback

    trainer = L.Trainer(max_epochs=10, callbacks=[TuiconsoleCallback()])
    trainer.fit(model, train_loader, val_loader)

The callback steers the optimizer(s) and lr scheduler(s) the Trainer built
from ``configure_optimizers`` (the real torch objects, not Lightning's
wrappers) through :func:`tuiconsole.steer`, at Lightning's own step boundary:
``on_train_batch_end`` of a batch in which an optimizer stepped, after the
step-interval schedulers stepped (so a batch of gradient accumulation is no
step, and a ``step`` command pauses between two optimizer steps).

- ``stop`` (and ``--max-steps``, ``--nan stop``) sets ``trainer.should_stop``:
  Lightning ends the fit at that batch as it does for EarlyStopping (running
  the validation that is due then). The final checkpoint and the journal's end
  record are written at the boundary; the fit's own end (``max_epochs``...)
  ends the run as FINISHED in ``on_train_end``, an exception as ERROR.
  ``fit()`` then returns, except where a steered loop of one's own would exit
  non-zero: a failed run (``--nan stop``: 1) or a stop by Ctrl+C / SIGTERM that
  tuiconsole's handlers caught (130 / 143) raise that StopTraining out of it.
  Lightning's own SIGTERM handler (``python train.py``: it is in place before the
  run begins) ends the fit with its SIGTERMException; that stops the run too.
- ``eval`` runs the LightningModule's ``validation_step`` over the Trainer's val
  dataloaders (``limit_val_batches`` applies) under ``eval()`` and ``no_grad()``;
  the loss is what it returns (a tensor, or ``"loss"`` / ``"val_loss"`` in a
  dict) or else what it logs under a name with ``loss`` in it (``val_loss``);
  the accuracy likewise (``acc``). Its ``self.log`` calls are caught, not sent
  to Lightning's loggers. Without val data or a ``validation_step``, ``eval``
  is refused.
- ``checkpoint`` writes tuiconsole's checkpoint (model, optimizer, scheduler,
  step) as in any run; Lightning's ModelCheckpoint goes on as it was set up.
- ``rebuild`` changes the optimizer object in place (its class too), so
  Lightning's optimizer step, its LightningOptimizer wrapper and the lr
  scheduler configs all go on with the new optimizer.
- ``split`` and ``rebuild`` change what Lightning's own checkpoints hold (more
  groups, another class's state). The callback's state in them says which
  (each optimizer's class and groups by parameter name), and a fit resumed
  from one (``ckpt_path=``) with the callback gets that layout back in
  ``on_fit_start``, before Lightning loads the optimizers' state.
- Several optimizers (manual optimization, a GAN) are steered as one run
  (engine/joined.py): each group is named after its optimizer (``generator``,
  ``discriminator/head``); lr, decay, set and split work on any group,
  rebuild is refused. Lightning's ``global_step`` counts each optimizer's
  steps; tuiconsole's step is one a batch.
- ``--resume`` does not apply: resume a fit with Lightning's ``ckpt_path=``.
- Under torchrun (``strategy="ddp"``, started by ``torchrun --nproc-per-node N
  train.py`` or ``tuiconsole run --nproc-per-node N train.py``; Lightning makes
  the process group and the DDP wrapper) every rank's callback steers its rank:
  ``steer()`` in ``on_train_start`` comes after Lightning made the group, and
  joins the ranks (engine/distributed.py). Rank 0 alone serves and journals; each
  command is applied on every rank at the same step, so ``should_stop`` is set on
  every rank at one step. ``eval`` runs ``validation_step`` on every rank over its
  shard (Lightning's DistributedSampler) and takes the mean of the ranks' results
  (with equal batches: the whole val set's mean); ``self.log(sync_dist=True)``
  is caught like any log, so Lightning reduces nothing there (a torchmetrics
  ``Metric`` syncs itself in ``compute()``, on every rank at once). DDP on one
  process is steered as one device. Refused: FSDP, DeepSpeed, model parallel and
  XLA strategies, and processes Lightning starts itself (``ddp_spawn``,
  ``ddp_notebook`` / ``ddp_fork``, ``devices=N`` without torchrun): tuiconsole
  cannot reach those, so they say to start the ranks with torchrun.

The loss each step is ``training_step``'s loss (the ``"loss"`` of its output,
detached, read only when a snapshot is due); for manual optimization return
it (or a dict with ``"loss"``), or name the key with ``loss=``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, SingleDeviceStrategy
from lightning.pytorch.strategies.launchers import _MultiProcessingLauncher
from lightning.pytorch.strategies.xla import XLAStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import nn
from torchmetrics import Metric

from tuiconsole import library
from tuiconsole.engine import distributed as D
from tuiconsole.engine import groups as G
from tuiconsole.engine import joined
from tuiconsole.engine.ownloop import Evaluate
from tuiconsole.errors import CommandError, StopTraining, TuiconsoleError

# What a training_step's output may hold the loss under, when ``loss=`` names none.
DEFAULT_LOSS_KEY = "loss"


class TuiconsoleCallback(pl.Callback):
    """Steer the fit from tuiconsole's console (see the module's docstring).

    ``evaluate``: a callable of your own for ``eval`` (no arguments; the loss, or a
    dict with "loss" and "accuracy"); by default the module's validation.
    ``loss``: the key of training_step's output that holds the loss, or a
    callable ``(outputs) -> loss``. ``optimizer_names``: with several optimizers,
    the name of each (its groups are named after it); by default the module
    path its parameters share (``generator``), else ``opt0``, ``opt1``...
    The rest are :func:`tuiconsole.steer`'s: ``run_dir``, ``max_steps``, ``nan``,
    ``paused``, ``replay``, ``log_every``, ``listen``, ``signal_every`` (under ``tuiconsole run``
    its command line decides them).
    """

    def __init__(
        self,
        *,
        evaluate: Evaluate | None = None,
        loss: str | Callable[[Any], Any] = DEFAULT_LOSS_KEY,
        optimizer_names: Sequence[str] | None = None,
        run_dir: str | Path | None = None,
        max_steps: int | None = None,
        nan: str | None = None,
        paused: bool = False,
        replay: str | Path | None = None,
        log_every: int | None = None,
        listen: bool = True,
        signal_every: int | None = None,
    ) -> None:
        super().__init__()
        if evaluate is not None and not callable(evaluate):
            raise TuiconsoleError(
                f"TuiconsoleCallback(evaluate=): must be a callable, got {type(evaluate).__name__}"
            )
        if not isinstance(loss, str) and not callable(loss):
            raise TuiconsoleError(
                f"TuiconsoleCallback(loss=): a key of training_step's output or a callable, "
                f"got {type(loss).__name__}"
            )
        self._evaluate = evaluate
        self._loss = loss
        self._names = list(optimizer_names) if optimizer_names is not None else None
        if self._names is not None and not all(
            isinstance(n, str) and n and n != "all" and not any(c.isspace() for c in n)
            for n in self._names
        ):
            raise TuiconsoleError(
                f"TuiconsoleCallback(optimizer_names=): names a user can type (no spaces, "
                f"not 'all'), got {self._names!r}"
            )
        self._options: dict[str, Any] = dict(
            run_dir=run_dir,
            max_steps=max_steps,
            nan=nan,
            paused=paused,
            replay=replay,
            log_every=log_every,
            listen=listen,
            signal_every=signal_every,
        )
        self.steer: library.Steer | None = None  # the run, from on_train_start on
        self._module: pl.LightningModule | None = None
        self._saved_layout: list[dict[str, Any]] | None = None  # from a checkpoint
        self._stepped = 0  # optimizer steps since the last boundary
        self._window: torch.Tensor | None = None  # the accumulation window's loss so far
        self._hooks: list[Any] = []

    # ------------------------------------------------------------------ Lightning's hooks

    def state_dict(self) -> dict[str, Any]:
        """In each checkpoint Lightning writes: each optimizer's class and groups (by
        parameter name), which ``split`` and ``rebuild`` change (see :func:`layout`)."""
        module = self._module
        if module is None:
            return {}
        return {"optimizers": [layout(module, _real(o)) for o in module.trainer.optimizers]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._saved_layout = state_dict.get("optimizers")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """A fit resumed from a checkpoint written after a split or rebuild: the optimizers
        configure_optimizers just built get that layout back, before Lightning loads
        their state into them (it needs the same groups, and the state is the class's)."""
        saved, self._saved_layout = self._saved_layout, None
        if not saved:
            return
        optimizers = [_real(o) for o in trainer.optimizers]
        if len(saved) != len(optimizers):
            return  # not the same optimizers: Lightning says what does not fit
        for opt, was in zip(optimizers, saved, strict=True):
            relayout(pl_module, opt, _scheduler_of(trainer, opt)[0], was)
        _rewrap(trainer)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.steer is not None:
            raise TuiconsoleError(
                "TuiconsoleCallback steers one fit: give each Trainer.fit() a new callback"
            )
        check_strategy(trainer)
        self._module = pl_module
        optimizers = [_real(o) for o in trainer.optimizers]
        if not optimizers:
            raise TuiconsoleError(
                "TuiconsoleCallback: configure_optimizers() gave the Trainer no optimizer"
            )
        if len(optimizers) == 1:
            (optimizer,) = optimizers
            scheduler, interval = _scheduler_of(trainer, optimizer)
        else:
            optimizer, scheduler, interval = self._joined(trainer, pl_module, optimizers)
        evaluate = self._evaluate or _Validation(trainer, pl_module)
        for opt in optimizers:
            self._hooks.append(opt.register_step_post_hook(self._count_step))
        self.steer = library.steer(
            pl_module,
            optimizer,
            scheduler=scheduler,
            scheduler_interval=interval,
            evaluate=evaluate,
            **self._options,
        )
        if self.steer.start_step:
            raise TuiconsoleError(
                "--resume does not apply to a Lightning fit (its loop would start over at "
                "step 0): resume it with trainer.fit(..., ckpt_path=<Lightning's checkpoint>)"
            )

    def _joined(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        optimizers: list[torch.optim.Optimizer],
    ) -> tuple[torch.optim.Optimizer, Any, str]:
        """Several optimizers as one (engine/joined.py), each group named after its own."""
        names = self._names or joined.member_names(pl_module, optimizers)
        if len(names) != len(optimizers) or len(set(names)) != len(names):
            raise TuiconsoleError(
                f"TuiconsoleCallback(optimizer_names=): {len(optimizers)} distinct names "
                f"needed (configure_optimizers gave {len(optimizers)} optimizers), got {names}"
            )
        members = []
        intervals = []
        for name, opt in zip(names, optimizers, strict=True):
            joined.name_groups(pl_module, name, opt)
            sched, interval = _scheduler_of(trainer, opt)
            if sched is not None:
                intervals.append(interval)
            members.append(joined.Member(name, opt, sched))
        optimizer = joined.JoinedOptimizer.of(members)
        interval = "step" if all(i == "step" for i in intervals) else "epoch"
        return optimizer, joined.JoinedScheduler.of(optimizer), interval

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        steer = self.steer
        if steer is None:
            return
        if steer.ended is not None:  # min_steps / min_epochs kept the fit going
            trainer.should_stop = True
            return
        stepped = self._stepped > 0
        loss = self._loss_of(outputs, required=stepped)
        if not stepped:  # accumulating gradients (or a skipped step): no boundary
            if pl_module.automatic_optimization and isinstance(loss, torch.Tensor):
                # Lightning divides each micro-batch's loss by accumulate_grad_batches:
                # the step's loss is their sum (kept on the device)
                self._window = loss if self._window is None else self._window + loss
            return
        self._stepped = 0
        if self._window is not None:
            if isinstance(loss, torch.Tensor):
                loss = self._window + loss
            self._window = None
        assert loss is not None
        going_on = steer.boundary(loss)
        _rewrap(trainer)
        if not going_on:
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._end(None)
        if self.steer is not None:
            # --nan stop: 1; Ctrl+C / SIGTERM tuiconsole caught: 130 / 143. Lightning runs
            # the on_exception hooks and tears down first.
            self.steer.leave_if_not_clean()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        steer = self.steer
        if steer is not None and isinstance(exception, SIGTERMException | KeyboardInterrupt):
            # A signal Lightning turned into an exception at its own point (its SIGTERM
            # handler; Ctrl+C where the script kept Python's): the run stops as a `stop`
            # does (final checkpoint, STOPPED), not as a failure.
            name = "SIGINT" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            steer.session.submit("stop", source=f"signal:{name}")  # names who stopped it
            steer.session.close()  # in this, the loop's thread: ends the run now
            exception = StopTraining(f"stopped by {name}")
        self._end(exception)

    # ------------------------------------------------------------------ inside

    def _count_step(self, *_: Any) -> None:
        self._stepped += 1

    def _end(self, error: BaseException | None) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        if self.steer is not None:
            self.steer.end(error)

    def _loss_of(self, outputs: Any, required: bool) -> torch.Tensor | float | None:
        if callable(self._loss):
            loss = self._loss(outputs)
        elif isinstance(outputs, torch.Tensor):
            loss = outputs
        elif isinstance(outputs, Mapping) and self._loss in outputs:
            loss = outputs[self._loss]
        elif not required:
            return None
        else:
            got = (
                f"a dict with keys {', '.join(map(str, outputs)) or 'none'}"
                if isinstance(outputs, Mapping)
                else type(outputs).__name__
            )
            raise TuiconsoleError(
                f"TuiconsoleCallback: training_step gave no loss under {self._loss!r} "
                f"(it returned {got}); return the loss (or a dict with it), or pass "
                "loss=<its key or a callable> to TuiconsoleCallback"
            )
        if isinstance(loss, torch.Tensor):
            return loss.detach()
        return loss  # type: ignore[no-any-return]


def check_strategy(trainer: pl.Trainer) -> None:
    """One device, or DDP over processes torchrun started (every rank's callback then
    steers its rank, engine/distributed.py); any other strategy is one line, refused."""
    strategy = trainer.strategy
    name = type(strategy).__name__
    if isinstance(strategy, SingleDeviceStrategy):
        return
    if not isinstance(strategy, DDPStrategy) or isinstance(
        strategy, DeepSpeedStrategy | XLAStrategy
    ):
        raise TuiconsoleError(
            f"TuiconsoleCallback: {name} is not supported: its optimizer holds "
            "sharded or flattened parameters (FSDP, DeepSpeed, model parallel) or runs on "
            'another device type; use strategy="ddp" (under torchrun) or one device'
        )
    if isinstance(strategy.launcher, _MultiProcessingLauncher):
        raise TuiconsoleError(
            f"TuiconsoleCallback: the {_strategy_name(strategy)} strategy starts its processes "
            'itself, which tuiconsole cannot reach; use strategy="ddp" and start the ranks '
            "with torchrun: `torchrun --nproc-per-node N train.py` or `tuiconsole run "
            "--nproc-per-node N train.py`"
        )
    if trainer.world_size == 1:
        return  # DDP over one process: steered as one device
    try:
        ranks = D.env_ranks()
    except TuiconsoleError:
        ranks = None
    if ranks is None or (ranks.rank, ranks.world_size) != (trainer.global_rank, trainer.world_size):
        raise TuiconsoleError(
            f"TuiconsoleCallback: this DDP fit's {trainer.world_size} processes were not "
            "started by torchrun (Lightning started them itself, or RANK / WORLD_SIZE in "
            "their environment do not say their place); start the ranks with torchrun: "
            "`torchrun --nproc-per-node N train.py` or `tuiconsole run --nproc-per-node N "
            "train.py`"
        )


def _strategy_name(strategy: DDPStrategy) -> str:
    method = getattr(strategy, "_start_method", "spawn")
    names = {"spawn": "ddp_spawn", "fork": "ddp_fork / ddp_notebook"}
    return names.get(method, f"ddp (start_method={method})")


def layout(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's class and its groups as lists of parameter names."""
    names = G.param_owners(model)
    return {
        "class": type(optimizer).__name__,
        "groups": [[names.get(id(p), "") for p in g["params"]] for g in optimizer.param_groups],
    }


def relayout(
    model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, was: dict[str, Any]
) -> None:
    """Give ``optimizer`` (as configure_optimizers built it) the groups and class of
    ``was``: each group takes the parameters named there, with the hyper-parameters
    (and scheduler entries) of the group its first parameter is in now, as a split
    does; then a class rebuild had changed becomes the optimizer's, in place. The
    values are the checkpoint's: Lightning loads them next. A layout over other
    parameters than these is left to Lightning's own check."""
    now = layout(model, optimizer)
    if now == was:
        return
    params = dict(model.named_parameters())
    flat = [n for g in was["groups"] for n in g]
    if sorted(flat) != sorted(n for g in now["groups"] for n in g) or not all(
        n in params for n in flat
    ):
        return
    group_of = {n: i for i, g in enumerate(now["groups"]) for n in g}
    if was["groups"] != now["groups"]:
        groups, origin = [], []
        for names in was["groups"]:
            source = group_of[names[0]] if names else 0
            old = optimizer.param_groups[source]
            groups.append({**old, "params": [params[n] for n in names]})
            origin.append((source, 1.0))
        G.apply_split(optimizer, scheduler, G.SplitPlan(groups, origin))
    if was["class"] != now["class"]:
        try:
            cls = G.optimizer_class(was["class"], optimizer)
        except CommandError:
            raise TuiconsoleError(
                f"TuiconsoleCallback: the checkpoint's optimizer was rebuilt as "
                f"{was['class']}, which torch.optim does not have here"
            ) from None
        rebuilt = cls(
            [
                {k: v for k, v in g.items() if k == "params" or k == "name"}
                for g in optimizer.param_groups
            ]
        )
        G.become(optimizer, rebuilt)
        G.reattach_scheduler(scheduler, optimizer)


def _rewrap(trainer: pl.Trainer) -> None:
    """After a ``rebuild`` to another class: Lightning's wrapper of that optimizer takes
    the new class too (its step goes to the real optimizer anyway; this keeps
    ``isinstance`` and the class name that ``self.optimizers()`` shows true)."""
    for wrapper in trainer.strategy._lightning_optimizers:
        real = type(wrapper._optimizer)
        if real not in type(wrapper).__bases__:
            wrapper.__class__ = type("Lightning" + real.__name__, (LightningOptimizer, real), {})


def _real(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer behind Lightning's wrapper."""
    real = optimizer.optimizer if isinstance(optimizer, LightningOptimizer) else optimizer
    assert isinstance(real, torch.optim.Optimizer)
    return real


def _scheduler_of(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> tuple[Any, str]:
    """The lr scheduler(s) on ``optimizer`` (several: one ChainedScheduler over them, a
    container the engine keeps in step; Lightning steps each as configured) and how
    often they step."""
    configs = [c for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
    if not configs:
        return None, "step"
    interval = "step" if all(c.interval == "step" for c in configs) else "epoch"
    if len(configs) == 1:
        return configs[0].scheduler, interval
    try:
        chained = torch.optim.lr_scheduler.ChainedScheduler(
            [c.scheduler for c in configs],
            optimizer,
        )
    except (TypeError, ValueError) as exc:
        raise TuiconsoleError(
            f"TuiconsoleCallback: the optimizer has {len(configs)} lr schedulers that cannot "
            f"be steered together ({exc})"
        ) from None
    return chained, interval


# ---------------------------------------------------------------------- eval


_LOSS_NAMES = ("val_loss", "val/loss", "loss", "valid_loss", "validation_loss")
_ACCURACY_NAMES = ("val_acc", "val_accuracy", "val/acc", "val/accuracy", "accuracy", "acc")


class _Validation:
    """``eval`` as the LightningModule's validation_step over the Trainer's val data.

    Called by the engine under ``model.eval()`` and ``torch.no_grad()``, the RNG
    forked, in the training thread between two steps. What validation_step logs
    is caught here (a dict per batch), not sent to Lightning's loggers.
    """

    def __init__(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._trainer = trainer
        self._module = pl_module

    def __call__(self) -> dict[str, float | None]:
        trainer, module = self._trainer, self._module
        if not is_overridden("validation_step", module):
            raise CommandError("eval: the LightningModule has no validation_step")
        no_data = CommandError(
            "eval: the fit has no val data (give trainer.fit(val_dataloaders=...) or "
            "define val_dataloader(); limit_val_batches=0 turns it off)"
        )
        loop = trainer.fit_loop.epoch_loop.val_loop
        if not loop._data_source.is_defined():
            raise no_data
        loop.setup_data()  # what Lightning does before its first validation
        combined = loop._combined_loader
        limits = list(loop.max_batches)
        if combined is None or not combined.flattened or not any(limits):
            raise no_data
        losses: list[torch.Tensor] = []
        accuracies: list[torch.Tensor] = []
        metrics: dict[str, Metric] = {}  # torchmetrics objects logged: computed at the end
        loaders: Sequence[Any] = combined.flattened
        try:
            for index, loader in enumerate(loaders):
                limit = limits[index] if index < len(limits) else math.inf
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= limit:
                        break
                    values = self._one(batch, batch_idx, index, len(loaders), metrics)
                    loss = _pick(values, _LOSS_NAMES, "loss")
                    if loss is not None:
                        losses.append(loss)
                    accuracy = _pick(values, _ACCURACY_NAMES, "acc")
                    if accuracy is not None:
                        accuracies.append(accuracy)
            computed = {name: m.compute() for name, m in metrics.items()}
        finally:
            for m in metrics.values():
                m.reset()  # as Lightning's validation does: the next one starts empty
        mean_loss = _mean(losses) if losses else _pick(computed, _LOSS_NAMES, "loss")
        if mean_loss is None:
            raise CommandError(
                "eval: validation_step returned no loss and logged none (return it, or "
                "self.log('val_loss', loss))"
            )
        mean_acc = _mean(accuracies) if accuracies else _pick(computed, _ACCURACY_NAMES, "acc")
        return {
            "loss": float(mean_loss.float().item()),
            "accuracy": float(mean_acc.float().item()) if mean_acc is not None else None,
        }

    def _one(
        self,
        batch: Any,
        batch_idx: int,
        loader_idx: int,
        n_loaders: int,
        metrics: dict[str, Metric],
    ) -> dict[str, Any]:
        """What one validation_step returned and logged, by name."""
        trainer, module = self._trainer, self._module
        batch = trainer.strategy.batch_to_device(batch, dataloader_idx=loader_idx)
        logged: dict[str, Any] = {}
        with _caught_logs(module, logged), trainer.precision_plugin.val_step_context():
            if n_loaders > 1:
                out = module.validation_step(batch, batch_idx, loader_idx)
            else:
                out = module.validation_step(batch, batch_idx)
        values = dict(logged)
        if isinstance(out, torch.Tensor):
            values["loss"] = out
        elif isinstance(out, Mapping):
            values.update({str(k): v for k, v in out.items()})
        metrics.update((k, v) for k, v in values.items() if isinstance(v, Metric))
        return values


def _mean(values: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(values).float().mean()


def _pick(values: Mapping[str, Any], names: Sequence[str], part: str) -> torch.Tensor | None:
    """The first of ``names`` in ``values``, else the first key containing ``part``."""
    keys = [k for k in names if k in values]
    keys += [k for k in values if part in k.lower() and k not in keys]
    for key in keys:
        value = values[key]
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return value.detach().reshape(())
        if isinstance(value, int | float) and not isinstance(value, bool):
            return torch.tensor(float(value))
    return None


class _caught_logs:  # noqa: N801 - a context manager, used as one
    """While it is entered, ``module.log`` / ``log_dict`` put values in ``into``."""

    def __init__(self, module: pl.LightningModule, into: dict[str, Any]) -> None:
        self._module, self._into = module, into

    def __enter__(self) -> None:
        into = self._into

        def log(name: str, value: Any, *_: Any, **__: Any) -> None:
            into[name] = value

        def log_dict(dictionary: Mapping[str, Any], *_: Any, **__: Any) -> None:
            into.update({str(k): v for k, v in dictionary.items()})

        self._module.__dict__["log"] = log
        self._module.__dict__["log_dict"] = log_dict

    def __exit__(self, *_: Any) -> None:
        self._module.__dict__.pop("log", None)
        self._module.__dict__.pop("log_dict", None)


__all__ = ["TuiconsoleCallback"]
