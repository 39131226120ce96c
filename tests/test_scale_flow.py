"""attnprune.core.scale_flow: where a group's per-channel scale flows, read from the graph."""

from __future__ import annotations

import torch
import torch.nn as nn

import attnprune
from attnprune.core import ScaleFlow, gate_spans, scale_flow
from attnprune.models import resnet20


class SiLUNet(nn.Module):
    """conv-bn-SiLU, then conv-bn-ReLU into the head: only the second group's scale can flow."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 4)

    def forward(self, x):
        x = nn.functional.silu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.head(x.mean((2, 3)))


def _flows(model, x):
    inst = attnprune.instrument(model, x)
    names = {m: n for n, m in model.named_modules()}
    flows = {g.name: scale_flow(inst.graph, g, names) for g in inst.groups}
    return inst, names, flows


def test_resnet20_scales_reach_batchnorms_and_the_head():
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inst, names, flows = _flows(model, torch.randn(2, 1, 28, 28))
    for name, flow in flows.items():
        assert isinstance(flow, ScaleFlow)
        assert flow.gates == () and flow.why == "", name  # ReLU, adds of the stream, pooling: it flows
        assert flow.norms or flow.weights, name
        assert all(isinstance(n, nn.BatchNorm2d) for n, _, _ in flow.norms), name
        assert [names[m] for m, _ in flow.weights] in ([], ["fc"]), name
    # a block's first conv: relu(a * bn1(conv1 x)) feeds conv2 alone, so bn2's statistics take a
    block = model.layer1[0]
    assert flows["layer1.0.conv1"].norms == ((block.bn2, None, block.conv2),)
    assert sum(names[m] == "fc" for f in flows.values() for m, _ in f.weights) == 1  # the last stream only
    # the names default to the graph's model's; the graph and the model are left alone
    g = inst.groups[0]
    assert scale_flow(inst.graph, g) == flows[g.name]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    inst.remove()


def test_silu_keeps_the_scale_at_the_gate_points():
    torch.manual_seed(0)
    model = SiLUNet()
    inst, _, flows = _flows(model, torch.randn(2, 3, 8, 8))
    stopped = flows["c1"]
    assert stopped.gates == ("b1",) and "Silu" in stopped.why
    assert stopped.norms == () and stopped.weights == ()
    assert [s.name for s in gate_spans(inst.groups[0])] == ["b1"]
    assert flows["c2"] == ScaleFlow(weights=((model.head, None),))  # relu, mean, then the head
    inst.remove()
