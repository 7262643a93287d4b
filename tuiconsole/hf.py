"""Steer a Hugging Face ``transformers.Trainer`` from the console.

::

    from tuiconsole.hf import TuiconsoleCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=val,
                      callbacks=[TuiconsoleCallback()])
    trainer.train()

The callback steers the optimizer and scheduler the Trainer built (the torch
optimizer inside accelerate's ``AcceleratedOptimizer``, the Trainer's
``lr_scheduler``) at the Trainer's own step boundary: ``on_step_end``, once per
optimizer step (after ``optimizer.step()``, the scheduler's step and
``zero_grad``), before the Trainer logs, evaluates or saves for that step. So
the journal's step N is the Trainer's ``state.global_step`` N and a command
journaled at step N is in force from optimizer step N + 1 on. (The journal counts
the steps of this ``train()`` call: after ``resume_from_checkpoint`` at global
step G, its step N is global step G + N.) How each command maps onto the Trainer:

- ``lr`` / ``decay`` / ``set`` / ``split``: applied to the optimizer in place
  (state kept); the scheduler's base lrs follow an lr change, so its schedule
  goes on from the new lr.
- ``rebuild``: in place on the same optimizer object (``groups.become``), which
  the Trainer, accelerate's wrapper and the scheduler all hold; under fp16
  (accelerate's GradScaler) the wrapper's step is re-pointed at the new class.
- ``stop`` (and ``--max-steps``, ``--nan stop``): ``control.should_training_stop``;
  the Trainer ends its loop after this step. Ctrl+C or SIGTERM under ``python
  train.py`` stop so too. ``train()`` then returns, except where a steered loop of
  one's own would exit non-zero: after a Ctrl+C / SIGTERM (130 / 143) or a failed run
  (``--nan stop``: 1) it raises that StopTraining (a SystemExit: no traceback).
- ``eval``: the Trainer's own ``evaluate()`` on its ``eval_dataset`` (its
  ``eval_loss``; ``eval_accuracy`` too when ``compute_metrics`` gives one), run
  at once, inside the boundary: it is logged to the Trainer's log history and
  ``report_to`` as any evaluation. Without an ``eval_dataset`` it is refused.
- ``checkpoint``: tuiconsole's checkpoint (model, optimizer, scheduler, step) in
  the run dir, as in any run; when the Trainer saves checkpoints at all
  (``save_strategy`` is not "no") ``control.should_save`` is set as well, so the
  Trainer also writes its own ``checkpoint-N`` at this step, the one
  ``trainer.train(resume_from_checkpoint=...)`` resumes from. The same holds
  for the final checkpoint of a ``stop``.

The step's loss is what ``Trainer.training_step`` returns (the tensor the
Trainer sums into its logged loss, before its NaN filter), summed over the
micro-batches of a gradient-accumulation step and kept on the device: no host
sync. To see it the callback wraps ``training_step`` on this trainer (an
instance attribute, removed when ``train()`` ends); an exception raised there
(forward or backward: a shape error, out of memory) ends the run as failed
before it propagates. An exception elsewhere in ``train()`` (the data loader,
another callback) is not seen by any callback: the run then ends with the
process (``python train.py``: the atexit handler of :mod:`tuiconsole.library`
records the error; under ``tuiconsole run`` the host does).

Under torchrun (``torchrun --nproc-per-node N train.py`` or ``tuiconsole run
--nproc-per-node N train.py``; accelerate makes the process group and the DDP
wrapper) every rank's callback steers its rank: the run joins the ranks
(engine/distributed.py), rank 0 alone serves and journals, and each command is
applied on every rank at the same step, so ``should_training_stop`` is set on
every rank at one step. ``eval`` is the Trainer's ``evaluate()`` on every rank at
that step: it gathers the ranks' losses itself (accelerate's
``gather_for_metrics``), so each rank gets the loss over the whole
``eval_dataset``.

Not supported, refused when ``train()`` begins: DeepSpeed and FSDP (their
optimizers hold flattened or sharded parameters), accelerate's tensor / context
parallelism, XLA, LOMO (no optimizer step), several processes that torchrun did
not start (no RANK / WORLD_SIZE naming each), and tuiconsole's ``--resume``
(resume with the Trainer's own ``resume_from_checkpoint``, which also restores its
data position).
"""

from __future__ import annotations

import sys
from typing import Any

import torch

try:  # the Trainer needs it too: transformers[torch] installs it
    from accelerate.optimizer import (  # type: ignore[import-untyped]
        AcceleratedOptimizer,
        patch_optimizer_step,
    )
    from accelerate.scheduler import AcceleratedScheduler  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        f"tuiconsole.hf needs accelerate, as the transformers Trainer does ({exc}): "
        "pip install 'tuiconsole[transformers]'"
    ) from exc
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import SaveStrategy

from tuiconsole.engine.distributed import env_ranks
from tuiconsole.errors import CommandError, TuiconsoleError
from tuiconsole.library import Steer, steer

# The options of tuiconsole.steer() a callback passes through.
STEER_OPTIONS = frozenset(
    (
        "run_dir",
        "max_steps",
        "nan",
        "paused",
        "replay",
        "log_every",
        "listen",
        "evaluate",
        "signal_every",
    )
)


class TuiconsoleCallback(TrainerCallback):
    """Steers the Trainer's ``train()`` it is given to (``callbacks=[...]``).

    Keyword options are those of :func:`tuiconsole.steer`: ``run_dir``,
    ``max_steps``, ``nan``, ``paused``, ``replay``, ``log_every``, ``listen``,
    ``signal_every``, and ``evaluate`` (a callable replacing the Trainer's ``evaluate()``).
    Under ``tuiconsole run`` its command line decides them instead.
    """

    def __init__(self, **options: Any) -> None:
        if "resume" in options:
            raise TuiconsoleError(
                "TuiconsoleCallback(resume=...): a Trainer run resumes with "
                "trainer.train(resume_from_checkpoint=...), which restores its data position and "
                "global step too; a checkpoint command (or stop) makes the Trainer write one "
                "when its save_strategy is not 'no'"
            )
        unknown = sorted(set(options) - STEER_OPTIONS)
        if unknown:
            raise TuiconsoleError(
                f"TuiconsoleCallback: unknown option(s) {', '.join(unknown)}; it takes "
                f"{', '.join(sorted(STEER_OPTIONS))}"
            )
        self._options = options
        self.steer: Steer | None = None  # the run, from on_train_begin on
        self.trainer: Trainer | None = None
        self._loss: torch.Tensor | None = None  # this step's loss so far, on the device
        self._control: TrainerControl | None = None
        self._accelerated: Any = None  # accelerate's AcceleratedOptimizer, if any
        self._optimizer_class: type | None = None
        self._saves = False  # the Trainer writes checkpoints (save_strategy is not "no")

    # ------------------------------------------------------------------ the Trainer's events

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        if self.steer is not None and not self.steer.stopped:
            # The last train() left through an exception no callback sees: end it now.
            self._end(RuntimeError("train() raised before it ended; a new train() began"))
        trainer = _calling_trainer(self)
        _check_supported(trainer, args)
        model = trainer.model
        if model is None:
            raise TuiconsoleError("TuiconsoleCallback: the Trainer has no model")
        optimizer, accelerated = _torch_optimizer(kwargs.get("optimizer"))
        scheduler = _torch_scheduler(kwargs.get("lr_scheduler"))
        options = dict(self._options)
        options.setdefault("evaluate", self._evaluate)
        self.trainer, self._accelerated = trainer, accelerated
        self._optimizer_class = type(optimizer)
        self._saves = args.save_strategy != SaveStrategy.NO
        self._control = control
        self._wrap_training_step(trainer)
        try:
            self.steer = steer(model, optimizer, scheduler=scheduler, **options)
        except BaseException:
            # StopTraining among them: a --paused run stopped before its first step. The
            # Trainer has no control that ends train() before a step, so it leaves train()
            # as it leaves a loop of the user's own (a SystemExit: exit 0, no traceback).
            self._unwrap_training_step()
            raise

    def on_step_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        run = self.steer
        if run is None or run.stopped:
            if run is not None:
                control.should_training_stop = True
            return
        loss, self._loss = self._loss, None
        if loss is None:
            self._end(TuiconsoleError("training_step was not called"))
            raise TuiconsoleError(
                "TuiconsoleCallback: no loss for this step: the Trainer's loop did not call "
                "trainer.training_step (a custom training loop is not supported)"
            )
        self._control = control
        checkpoint = run.last_checkpoint
        skipped = bool(getattr(self._accelerated, "step_was_skipped", False))
        going_on = run.boundary(loss, skipped=skipped)
        self._follow_rebuild()
        if not going_on:
            control.should_training_stop = True
            # Exit code 1: the run failed (a stop by a signal has 130 or 143): no Trainer
            # checkpoint of weights that may be NaN.
            failed = run.ended is not None and run.ended.code == 1
            control.should_save = control.should_save or (self._saves and not failed)
        elif run.last_checkpoint != checkpoint and self._saves:
            control.should_save = True

    def on_train_end(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        **kwargs: Any,
    ) -> None:
        self._end(None)
        if self.steer is not None:
            self.steer.leave_if_not_clean()  # --nan stop: 1; Ctrl+C / SIGTERM: 130 / 143

    # ------------------------------------------------------------------ the step's loss

    def _wrap_training_step(self, trainer: Trainer) -> None:
        """Keep what ``trainer.training_step`` returns (summed over micro-batches)."""
        step = trainer.training_step

        def training_step(*args: Any, **kwargs: Any) -> torch.Tensor:
            try:
                loss: torch.Tensor = step(*args, **kwargs)
            except BaseException as exc:
                self._end(exc)
                raise
            self._loss = loss if self._loss is None else self._loss + loss
            return loss

        training_step.tuiconsole_wraps = step  # type: ignore[attr-defined]
        trainer.training_step = training_step  # type: ignore[method-assign]

    def _unwrap_training_step(self) -> None:
        trainer = self.trainer
        if trainer is not None and hasattr(
            trainer.__dict__.get("training_step"), "tuiconsole_wraps"
        ):
            del trainer.training_step
        self._loss = None

    def _end(self, error: BaseException | None) -> None:
        self._unwrap_training_step()
        run = self.steer
        if run is not None:
            run.end(error)

    # ------------------------------------------------------------------ commands

    def _evaluate(self) -> dict[str, float]:
        """The Trainer's own evaluate(), its schedule left as it was."""
        trainer = self.trainer
        assert trainer is not None
        if trainer.eval_dataset is None:
            raise CommandError(
                "eval: this Trainer has no eval_dataset; give Trainer(eval_dataset=...) to "
                "evaluate (or TuiconsoleCallback(evaluate=...))"
            )
        control = self._control
        # evaluate() clears should_evaluate (on_evaluate) and should_log (on_log): keep the
        # Trainer's own plan for this step.
        kept = (control.should_evaluate, control.should_log) if control is not None else None
        try:
            metrics = trainer.evaluate()
        finally:
            if control is not None and kept is not None:
                control.should_evaluate, control.should_log = kept
        loss = metrics.get("eval_loss")
        if loss is None:  # an eval_dataset dict: eval_<name>_loss for each
            loss = next((v for k, v in metrics.items() if k.endswith("_loss")), None)
        if loss is None:
            raise CommandError(
                f"eval: the Trainer's evaluate() gave no loss (metrics: {', '.join(metrics)}); "
                "its model must return a loss for the eval_dataset's labels"
            )
        result = {"loss": float(loss)}
        accuracy = metrics.get("eval_accuracy")
        if isinstance(accuracy, int | float):
            result["accuracy"] = float(accuracy)
        return result

    def _follow_rebuild(self) -> None:
        """A rebuild as another class under fp16: accelerate's GradScaler path holds the
        optimizer's bound ``step`` of the old class; give it the new one."""
        accelerated, inner = self._accelerated, self.steer.optimizer if self.steer else None
        if inner is None or type(inner) is self._optimizer_class:
            return
        self._optimizer_class = type(inner)
        if accelerated is not None and getattr(accelerated, "scaler", None) is not None:
            accelerated._optimizer_original_step_method = inner.step
            accelerated._optimizer_patched_step_method = patch_optimizer_step(
                accelerated, inner.step
            )


# ---------------------------------------------------------------------- what the callback sees


def _calling_trainer(callback: TrainerCallback) -> Trainer:
    """The Trainer whose ``train()`` calls ``callback`` now.

    A callback is not given its Trainer (only the model, optimizer, scheduler and
    data loaders), but eval needs its ``evaluate()`` and the loss its
    ``training_step``: it is the ``self`` of a frame up the stack, one whose
    callback handler holds this callback.
    """
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer) and callback in candidate.callback_handler.callbacks:
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    raise TuiconsoleError(
        "TuiconsoleCallback: no transformers.Trainer is calling it; give it to "
        "Trainer(callbacks=[TuiconsoleCallback()]) and call trainer.train()"
    )


def _check_supported(trainer: Trainer, args: TrainingArguments) -> None:
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled or trainer.is_fsdp_xla_enabled:
        kind = "DeepSpeed" if trainer.is_deepspeed_enabled else "FSDP"
        raise TuiconsoleError(
            f"TuiconsoleCallback: a {kind} run is not supported: its optimizer holds "
            "flattened or sharded parameters that tuiconsole's commands cannot edit"
        )
    if args.optim in ("lomo", "adalomo"):
        raise TuiconsoleError(
            f"TuiconsoleCallback: optim={getattr(args.optim, 'value', args.optim)} is not "
            "supported: LOMO updates the weights inside backward and never runs optimizer.step()"
        )
    if args.world_size > 1:
        _check_ranks(trainer, args)


def _check_ranks(trainer: Trainer, args: TrainingArguments) -> None:
    """Several processes: DDP (accelerate's MULTI_CPU / MULTI_GPU...) over ranks torchrun
    started, each steered by its own callback (engine/distributed.py); no sharding."""
    kind = getattr(trainer.accelerator, "distributed_type", None)
    kind = str(getattr(kind, "value", kind))
    if kind in ("XLA", "MEGATRON_LM"):
        raise TuiconsoleError(
            f"TuiconsoleCallback: a {kind} run is not supported; on several processes "
            "tuiconsole steers DDP"
        )
    config = getattr(trainer.accelerator, "parallelism_config", None)
    sharded = [
        what
        for what in ("tp", "cp", "sp", "dp_shard")
        if config is not None and getattr(config, f"{what}_enabled", False)
    ]
    if sharded:
        raise TuiconsoleError(
            f"TuiconsoleCallback: parallelism_config shards the model ({', '.join(sharded)}); "
            "tuiconsole's commands cannot edit sharded parameters: on several processes it "
            "steers DDP"
        )
    try:
        ranks = env_ranks()
    except TuiconsoleError:
        ranks = None
    if (
        ranks is None
        or (ranks.rank, ranks.world_size) != (args.process_index, args.world_size)
        or not torch.distributed.is_initialized()
    ):
        raise TuiconsoleError(
            f"TuiconsoleCallback: this run's {args.world_size} processes were not started by "
            "torchrun (RANK / WORLD_SIZE in their environment do not say their place); start "
            "them with `torchrun --nproc-per-node N train.py` or `tuiconsole run "
            "--nproc-per-node N train.py`"
        )


def _torch_optimizer(optimizer: Any) -> tuple[torch.optim.Optimizer, Any]:
    """The torch optimizer inside accelerate's AcceleratedOptimizer, and that wrapper."""
    if isinstance(optimizer, AcceleratedOptimizer):
        return optimizer.optimizer, optimizer
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TuiconsoleError(
            f"TuiconsoleCallback: the Trainer's optimizer is a {type(optimizer).__name__}, "
            "not a torch.optim.Optimizer"
        )
    return optimizer, None


def _torch_scheduler(scheduler: Any) -> Any:
    """The Trainer's lr scheduler, out of accelerate's AcceleratedScheduler if wrapped."""
    return scheduler.scheduler if isinstance(scheduler, AcceleratedScheduler) else scheduler


__all__ = ["TuiconsoleCallback"]
