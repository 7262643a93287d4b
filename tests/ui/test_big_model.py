"""A 6,300-module model: the tree loads children only on expand (timings: benchmarks/ui_scale)."""

from __future__ import annotations

from torch import nn

from tests.ui.real_run import make_data, until_shown
from tuiconsole.engine.snapshot import RunState
from tuiconsole.script import TrainingSpec
from tuiconsole.ui.app import ConsoleApp


def deep_model(stages: int = 50, blocks: int = 25) -> nn.Module:
    def block() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Dropout(0.0))

    body = nn.Sequential(*[nn.Sequential(*[block() for _ in range(blocks)]) for _ in range(stages)])
    return nn.Sequential(body, nn.Linear(8, 3))


async def test_5000_module_model_loads_tree_children_only_on_expand(run_factory) -> None:
    import torch

    model = deep_model()
    n_modules = len(list(model.modules()))
    assert n_modules > 5000
    spec = TrainingSpec(
        model=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        criterion=nn.CrossEntropyLoss(),
        train_loader=make_data(),
        epochs=1,
    )
    session = run_factory(paused=True, spec=spec)
    app = ConsoleApp(session)
    async with app.run_test(size=(120, 40)) as pilot:
        await until_shown(pilot, app, lambda s: s.status.state == RunState.PAUSED, "the model")
        await pilot.pause()
        tree = app.layer_tree
        assert len(app.snap.modules) == n_modules
        # Only the model and its direct children exist as tree nodes so far.
        assert len(tree._loaded) == 3, sorted(tree._loaded)
        # How long opening takes is measured in benchmarks/ui_scale.py, not asserted here.

        # Expanding a stage with the keyboard loads exactly its children.
        await pilot.press("down", "right")  # "0" (the body): expand
        await pilot.pause()
        assert len(tree._loaded) == 3 + 50
        await pilot.press("down", "right")  # "0.0" (first stage): expand
        await pilot.pause()
        assert len(tree._loaded) == 3 + 50 + 25
        assert tree.label_of("0.0.0").startswith("0 Sequential")
        assert "■group0 0.01" in tree.label_of("0.0.0")
