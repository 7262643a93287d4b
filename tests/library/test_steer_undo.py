"""``undo`` and ``at`` in a loop of the user's own (the same command path as the
trainer's); ``rollback`` is refused there, with the reason."""

from __future__ import annotations

from tests.library.steerloop import journal, make, train


def test_undo_and_at_work_in_an_own_loop(new_steer):
    parts = make()
    steer = new_steer(parts)
    opt = parts.optimizer
    body = [id(p) for p in opt.param_groups[0]["params"]]
    seen: dict[int, dict[str, object]] = {}
    answers: dict[str, object] = {}

    def at(step: int) -> None:
        # what boundary `step` left (commands sent now are applied at boundary step + 1)
        seen[step] = {
            "names": [g["name"] for g in opt.param_groups],
            "lrs": [g["lr"] for g in opt.param_groups],
            "state": {id(p): id(st["momentum_buffer"]) for p, st in opt.state.items()},
        }
        # one command a boundary: a boundary may leave the rest for the next one
        sent = {2: "lr head 0.5", 3: "split b0 body.0", 4: "at 9 lr body 0.001"}
        sent |= {5: "undo", 6: "undo", 7: "rollback"}
        if step in sent:
            answers[f"{step}: {sent[step]}"] = steer.session.submit(sent[step])

    train(steer, parts, 12, before_boundary=at)
    steer.close()
    results = {k: f.result(5) for k, f in answers.items()}
    rollback = results.pop("7: rollback")
    assert all(r.ok for r in results.values()), results
    assert not rollback.ok and "the script's own" in rollback.message
    assert seen[4]["names"] == ["body", "head", "b0"] and seen[4]["lrs"][1] == 0.5
    assert seen[6]["names"] == ["body", "head"] and seen[6]["lrs"] == [0.02, 0.5]
    assert seen[7]["lrs"] == [0.02, 0.05]
    assert [id(p) for p in opt.param_groups[0]["params"]] == body  # each in its place
    assert seen[6]["state"] == seen[5]["state"]  # the same momentum buffers throughout
    assert seen[8]["lrs"] == [0.02, 0.05] and seen[9]["lrs"] == [0.001, 0.05]
    fired = [r for r in journal(steer.run_dir) if r.get("source") == "at"]
    assert [(r["step"], r["cmd"]) for r in fired] == [(9, "lr body 0.001")]
