"""Group naming for both of the seed's ways of giving layers their own lr."""

import torch
from torch import nn

from tests.unit.models import Net
from tuiconsole.engine import groups as G


def test_method1_groups_named_by_subnetwork():
    net = Net()
    opt = torch.optim.SGD(
        [
            {"params": net.features.parameters()},
            {"params": net.classifier.parameters(), "lr": 1e-2},
        ],
        lr=1e-5,
    )
    G.ensure_names(opt, net)
    assert G.group_names(opt) == ["features", "classifier"]


def test_method2_special_layers_by_id():
    net = Net()
    special = nn.ModuleList([net.classifier[0]])
    special_ids = set(map(id, special.parameters()))
    base = filter(lambda p: id(p) not in special_ids, net.parameters())
    opt = torch.optim.SGD(
        [{"params": base}, {"params": special.parameters(), "lr": 0.01}], lr=0.001
    )
    G.ensure_names(opt, net)
    # base = features + classifier.3: no common path -> group0
    assert G.group_names(opt) == ["group0", "classifier.0"]
    special2 = [net.features[0], net.features[2]]
    opt2 = torch.optim.SGD(
        [
            {"params": net.classifier.parameters()},
            {"params": [p for m in special2 for p in m.parameters()]},
        ],
        lr=0.1,
    )
    G.ensure_names(opt2, net)
    assert G.group_names(opt2) == ["classifier", "features"]


def test_single_layer_group_and_script_names_and_uniqueness():
    net = Net()
    opt = torch.optim.SGD(
        [
            {"params": net.classifier[0].parameters()},
            {"params": net.classifier[3].parameters(), "name": "head"},
            {"params": net.features[0].parameters()},
            {"params": net.features[2].parameters(), "name": "features.0"},
        ],
        lr=0.1,
    )
    G.ensure_names(opt, net)
    assert G.group_names(opt) == ["classifier.0", "head", "features.0", "features.0-2"]


def test_module_table_marks_frozen_shared_and_groups():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.body = nn.Linear(4, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight  # tied
            self.body.bias.requires_grad_(False)

    m = Tied()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    G.ensure_names(opt, m)
    table = {n.path: n for n in G.module_table(m, opt)}
    assert table["head"].shared == (("weight", "emb"),)
    assert table["head"].n_params == 0  # listed once, under its first owner
    assert table["body"].frozen == ("bias",)
    assert table["body"].n_params == 16
    assert table["emb"].groups == ("group0",)
    assert table[""].n_params_total == 40 + 16
    assert set(table[""].children) == {"emb", "body", "head"}


def test_resolve_target_group_module_all():
    net = Net()
    opt = torch.optim.SGD(
        [{"params": net.features.parameters()}, {"params": net.classifier.parameters()}], lr=0.1
    )
    G.ensure_names(opt, net)
    assert G.resolve_target("all", net, opt) == [0, 1]
    assert G.resolve_target("classifier", net, opt) == [1]
    assert G.resolve_target("features.2", net, opt) == [0]
    assert G.resolve_target("", net, opt) == [0, 1]
