"""`ls --json` carries the run's step view (amp, clipping, accumulation), read from its
server with a lite probe, as the snapshot has it."""

from __future__ import annotations

import dataclasses
import json

from remote_helpers import TINY, wait_until

from tuiconsole.engine.snapshot import StepView
from tuiconsole.remote.detach import make_info
from tuiconsole.remote.registry import new_run_id
from tuiconsole.remote.server import RemoteServer
from tuiconsole.session import LocalSession


def test_ls_json_carries_the_step_view(runtime_env, tmp_path) -> None:
    from typer.testing import CliRunner

    from tuiconsole.cli import app

    run_dir = tmp_path / "run"
    local = LocalSession.from_script(
        TINY, run_dir=run_dir, amp="bf16", grad_clip=0.5, accumulate=2
    ).start()
    info = make_info(new_run_id(), TINY, run_dir, detached=False, decay_factor=0.1)
    server = RemoteServer(local, info).start()
    try:
        wait_until(lambda: local.snapshot().status.step > 3, 20, "training steps")
        listing = CliRunner().invoke(app, ["ls", "--json"])  # in-process: the same runtime dir
        assert listing.exit_code == 0, listing.output
        (row,) = [r for r in map(json.loads, listing.stdout.splitlines()) if r["id"] == info.id]
        view = row["step_view"]
        assert set(view) == {f.name for f in dataclasses.fields(StepView)}
        assert (view["amp"], view["grad_clip"], view["accumulate"]) == ("bf16", 0.5, 2)
        assert view["clip_steps"] > 0 and view["grad_norm"] is not None
        # the per-group signals (engine/signals.py), their histories left out
        assert row["signal_every"] >= 1
        groups = [g["name"] for g in row["optimizer"]["groups"]]
        assert [s["name"] for s in row["signals"]] == groups
        assert set(row["signals"][0]) == {
            "name",
            "step",
            "grad_norm",
            "param_norm",
            "update_ratio",
            "adam_step",
        }
        assert all(s["step"] >= 1 and s["grad_norm"] is not None for s in row["signals"])
    finally:
        server.close()
        local.close()
