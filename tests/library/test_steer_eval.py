"""``eval`` runs the user's ``evaluate`` callable in the loop's thread, under
model.eval() and torch.no_grad(), the RNG forked and every module's train/eval mode
put back; without one it is refused with a clear message."""

from __future__ import annotations

import threading

import torch
from torch import nn

from tests.library.steerloop import commands, make, train
from tests.reliability.helpers import assert_same, weights


def test_eval_runs_evaluate_in_eval_mode_without_grad_in_the_loop_thread(new_steer):
    parts = make()
    seen: list[dict[str, object]] = []

    def evaluate():
        seen.append(
            {
                "training": [m.training for m in parts.model.modules()],
                "grad": torch.is_grad_enabled(),
                "thread": threading.current_thread(),
            }
        )
        return parts.evaluate()

    steer = new_steer(parts, evaluate=evaluate)
    result = []
    train(
        steer,
        parts,
        8,
        before_boundary=lambda s: s == 3 and result.append(steer.session.submit("eval")),
    )
    res = result[0].result()
    assert res.ok, res
    assert seen == [
        {
            "training": [False] * len(list(parts.model.modules())),
            "grad": False,
            "thread": threading.main_thread(),
        }
    ]
    assert parts.model.training and torch.is_grad_enabled()
    point = steer.snapshot().evals[-1]
    assert point.step == 4 and point.accuracy is not None and 0.0 <= point.accuracy <= 1.0
    assert res.message.startswith(f"eval at step 4: loss {point.loss:.4g}")


def test_eval_forks_the_rng_so_the_run_is_the_same_with_or_without_it(new_steer):
    """The model has Dropout and evaluate() draws random numbers: the run that evaluates
    ends with the weights of the one that does not."""

    def run(with_eval: bool):
        parts = make()

        def evaluate():
            torch.rand(1000)  # would shift every later dropout mask if not forked
            return parts.evaluate()

        steer = new_steer(parts, evaluate=evaluate)
        train(
            steer,
            parts,
            12,
            before_boundary=lambda s: with_eval and s in (2, 7) and steer.session.submit("eval"),
        )
        steer.close()
        assert [c[1] for c in commands(steer.run_dir)] == (["eval", "eval"] if with_eval else [])
        return parts

    assert_same(weights(run(True).model), weights(run(False).model))


def test_eval_puts_each_modules_mode_back_a_frozen_batchnorm_stays_frozen(new_steer):
    parts = make()
    parts.model.body.insert(1, nn.BatchNorm1d(16))
    parts.optimizer.add_param_group(
        {"params": parts.model.body[1].parameters(), "name": "bn", "lr": 0.0}
    )
    parts.model.body[1].eval()  # fine-tuning: its running stats are frozen
    steer = new_steer(parts, evaluate=parts.evaluate)
    stats = parts.model.body[1].running_mean.clone()
    train(steer, parts, 6, before_boundary=lambda s: s == 1 and steer.session.submit("eval"))
    assert parts.model.training and not parts.model.body[1].training
    assert torch.equal(parts.model.body[1].running_mean, stats)


def test_eval_without_evaluate_is_refused_with_a_clear_message(new_steer):
    parts = make()
    steer = new_steer(parts)
    fut = steer.session.submit("eval")
    train(steer, parts, 2)
    res = fut.result()
    assert not res.ok
    assert res.message == (
        "no evaluate= was given to tuiconsole.steer(): there is nothing to evaluate with"
    )
    assert commands(steer.run_dir) == [(1, "eval", False)]
    assert steer.snapshot().evals == ()


def test_an_evaluate_that_raises_or_returns_nonsense_is_a_failed_command(new_steer):
    parts = make()
    answers = iter(
        [
            ValueError("eval data missing"),
            "high",
            {"acc": 0.5},
            torch.ones(3),
            {"loss": torch.tensor(0.25), "acc": 0.75},
            1.5,
        ]
    )

    def evaluate():
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    steer = new_steer(parts, evaluate=evaluate)
    futs = []
    train(steer, parts, 7, before_boundary=lambda s: futs.append(steer.session.submit("eval")))
    messages = [(f.result().ok, f.result().message) for f in futs[:6]]
    assert messages[0] == (False, "eval failed: ValueError: eval data missing")
    assert messages[1] == (False, "eval: `evaluate` must return a number for loss, got str")
    assert messages[2] == (False, 'eval: `evaluate` returned a dict without "loss" (keys: acc)')
    assert messages[3] == (False, "eval: `evaluate` returned a loss of shape (3,)")
    assert messages[4] == (True, "eval at step 5: loss 0.25, accuracy 75.0%")
    assert messages[5][0] and "loss 1.5" in messages[5][1]
    assert parts.model.training  # put back after each, failed or not
    assert [(p.loss, p.accuracy) for p in steer.snapshot().evals] == [(0.25, 0.75), (1.5, None)]
