"""Bad input, divergence and interruption: clear errors, before training, model untouched."""

from __future__ import annotations

import copy
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torch.nn.utils import parametrize
from torch.utils.data import DataLoader, TensorDataset

import attnprune
import attnprune.train.pipeline as api
from attnprune import BudgetError, TrainingDivergedError, UnsupportedModelError
from attnprune.models import resnet20

from _util import assert_unchanged, count_hooks, snapshot


def tiny_data(n=32, seed=0, channels=1, classes=10):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, 16, 16, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return resnet20(in_channels=1)


class Counting:
    """Cross-entropy that counts its calls, and can fail at call ``at``."""

    def __init__(self, at=None, fail=None):
        self.calls = 0
        self.at = at
        self.fail = fail

    def __call__(self, out, y):
        self.calls += 1
        if self.at is not None and self.calls >= self.at:
            if self.fail == "nan":
                return F.cross_entropy(out, y) * float("nan")
            raise self.fail
        return F.cross_entropy(out, y)


class NoPrunable(nn.Module):
    """Only an output layer: nothing attnprune may prune."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(256, 10)

    def forward(self, x):
        return self.fc(x.flatten(1))


class SmallConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 3, padding=1)
        self.b1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.b2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class TiedNet(SmallConvNet):
    """c3 holds c2's weight tensor (tied weights)."""

    def __init__(self):
        super().__init__()
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.c3.weight = self.c2.weight

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(self.c3(x).mean((2, 3)))


class ViewNet(SmallConvNet):
    """A hard-coded channel count in ``view``."""

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean(3).view(x.shape[0], 8, 16).mean(2))


class ReshapeNet(SmallConvNet):
    """A hard-coded reshape of the feature map."""

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(x.reshape(-1, 8, 256).mean(2))


class BufferNet(SmallConvNet):
    """A per-channel buffer torch-pruning does not resize."""

    def __init__(self):
        super().__init__()
        self.register_buffer("scale", torch.linspace(0.5, 1.5, 8).view(1, 8, 1, 1))

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x))) * self.scale
        x = F.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


class TupleNet(SmallConvNet):
    """Returns (logits, features)."""

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3))), x


def first_ce(out, y):
    return F.cross_entropy(out[0], y)


x16 = lambda n=4, c=1: torch.randn(n, c, 16, 16)  # noqa: E731
y10 = lambda n=4, hi=10: torch.randint(0, hi, (n,))  # noqa: E731

# id -> (changes to the call, exception type, message pattern)
BAD_INPUT = {
    "ratio_zero": (dict(ratio=0.0), ValueError, r"ratio must be in \(0, 1\)"),
    "ratio_negative": (dict(ratio=-0.2), ValueError, r"ratio must be in \(0, 1\)"),
    "ratio_one": (dict(ratio=1.0), ValueError, r"ratio must be in \(0, 1\)"),
    "ratio_above_one": (dict(ratio=1.5), ValueError, r"ratio must be in \(0, 1\)"),
    "ratio_nan": (dict(ratio=math.nan), ValueError, r"ratio must be in \(0, 1\).*nan"),
    "ratio_string": (dict(ratio="half"), TypeError, r"ratio must be a number in \(0, 1\)"),
    "ratio_none": (dict(ratio=None), TypeError, r"ratio must be a number"),
    "ratio_bool": (dict(ratio=True), TypeError, r"ratio must be a number"),
    "unknown_method": (dict(method="magic"), ValueError, r"unknown method 'magic'; valid methods: \[.*'paam'"),
    "method_not_a_name": (dict(method=3), TypeError, r"method must be a method name"),
    "unknown_target": (dict(target="flops"), ValueError, r"target must be one of \('params', 'macs', 'latency'\)"),
    "unknown_option": (dict(warmup_epoch=1), ValueError, r"unknown option\(s\) \['warmup_epoch'\].*valid options"),
    "bad_option_value": (dict(lr=-1.0), ValueError, r"option 'lr' of \w+ must be a number > 0"),
    "bad_option_choice": (dict(variant="big"), ValueError, r"'variant' of PAAMConfig must be one of"),
    "round_to_zero": (dict(round_to=0), ValueError, r"round_to must be 'auto' .* or a positive int"),
    "seed_negative": (dict(seed=-1), ValueError, r"seed must be None or an int >= 0"),
    "seed_float": (dict(seed=1.5), ValueError, r"seed must be None or an int >= 0"),
    "loss_fn_not_callable": (dict(loss_fn="ce"), TypeError, r"loss_fn must be callable"),
    "device_unknown": (dict(device="gpu9"), ValueError, r"device must be a torch.device or a name"),
    "device_meta": (dict(device="meta"), ValueError, r"device must hold real values"),
    "resume_without_dir": (dict(resume=True), ValueError, r"resume=True needs checkpoint_dir"),
    "resume_not_bool": (dict(resume="yes"), TypeError, r"resume must be True or False"),
    "checkpoint_dir_type": (dict(checkpoint_dir=3), TypeError, r"checkpoint_dir must be None or a path"),
    "distributed_without_group": (dict(distributed=True), ValueError, r"distributed=True needs an initialised"),
    "distributed_not_bool": (dict(distributed="yes"), TypeError, r"distributed must be None"),
    "empty_loader": (dict(loader=[]), ValueError, r"loader is empty; it must yield \(inputs, targets\)"),
    "loader_not_iterable": (dict(loader=5), TypeError, r"loader must be an iterable of \(inputs, targets\)"),
    "loader_yields_tensors": (dict(loader=[x16()]), TypeError, r"loader must yield \(inputs, targets\) pairs"),
    "loader_yields_triples": (dict(loader=[(x16(), y10(), y10())]), TypeError,
                              r"loader must yield \(inputs, targets\) pairs; got a tuple of length 3"),
    "loader_yields_strings": (dict(loader=[("a", y10())]), TypeError, r"loader's inputs must be a tensor"),
    "eval_loader_not_iterable": (dict(eval_loader=5), TypeError, r"eval_loader must be an iterable"),
    "loader_inputs_do_not_fit": (dict(loader=[(x16(c=3), y10())]), ValueError,
                                 r"loader's inputs cannot be fed to the model"),
    "example_inputs_do_not_fit": (dict(example_inputs=torch.randn(1, 3, 16, 16)), ValueError,
                                  r"example_inputs cannot be fed to the model"),
    "example_inputs_not_tensors": (dict(example_inputs="x"), TypeError, r"example_inputs must be a torch.Tensor"),
    "targets_out_of_range": (dict(loader=[(x16(), y10(hi=1) + 50)]), ValueError,
                             r"loss_fn\(outputs, targets\) fails.*\[0, number of outputs\)"),
    "loss_not_scalar": (dict(loss_fn=lambda o, y: F.cross_entropy(o, y, reduction="none")), TypeError,
                        r"loss_fn\(outputs, targets\) must return a scalar tensor"),
    "data_on_meta": (dict(loader=[(x16().to("meta"), y10().to("meta"))]), ValueError,
                     r"loader yields tensors on the meta device"),
    "unreachable_ratio": (dict(model=SmallConvNet, ratio=0.98), BudgetError,
                          r"ratio 0\.980 of params cannot be reached.*largest reachable ratio is 0\.\d+"),
    "unreachable_ratio_round_to": (dict(ratio=0.9, round_to=16), BudgetError,
                                   r"multiples of 16.*largest reachable ratio is 0\.\d+"),
    "every_group_ignored": (dict(model=SmallConvNet, ignored_layers=["c1", "c2"]), UnsupportedModelError,
                            r"no prunable channel group \(every group is ignored"),
    "no_prunable_layer": (dict(model=NoPrunable), UnsupportedModelError, r"no prunable channel group"),
    # issue 15: tied weights, evaluation data, exactness, single-use loaders, option values
    "tied_weights": (dict(model=TiedNet), UnsupportedModelError,
                     r"modules 'c2' and 'c3' share one parameter \(c2\.weight = c3\.weight\)"),
    "eval_loader_empty": (dict(eval_loader=[]), ValueError, r"eval_loader is empty"),
    "eval_loader_single_use": (dict(eval_loader=iter([(x16(), y10())])), TypeError,
                               r"eval_loader must be re-iterable.*a DataLoader or a list"),
    "eval_targets_n_by_1": (dict(eval_loader=[(x16(), y10().unsqueeze(1))]), ValueError,
                            r"eval_loader cannot be scored: cannot score targets of shape \(2, 1\)"),
    "eval_targets_float": (dict(eval_loader=[(x16(), torch.rand(4))]), ValueError,
                           r"eval_loader cannot be scored: accuracy needs integer class indices"),
    "eval_model_returns_tuple": (dict(model=TupleNet, loss_fn=first_ce, eval_loader=[(x16(), y10())]), TypeError,
                                 r"eval_loader cannot be scored: accuracy needs the model to return one tensor"),
    "eval_metric_not_callable": (dict(eval_metric=3), TypeError, r"eval_metric must be callable"),
    "eval_metric_bad_result": (dict(eval_metric=lambda o, y: "good", eval_loader=[(x16(), y10())]), TypeError,
                               r"eval_metric\(outputs, targets\) must return \(correct, total\)"),
    "hard_coded_view": (dict(model=ViewNet), UnsupportedModelError,
                        r"ViewNet cannot be pruned exactly: once channels are removed its forward fails"),
    "hard_coded_reshape": (dict(model=ReshapeNet), UnsupportedModelError,
                           r"ReshapeNet cannot be pruned exactly.*hard-coded channel count"),
    "per_channel_buffer": (dict(model=BufferNet), UnsupportedModelError, r"BufferNet cannot be pruned exactly"),
    "half_model": (dict(model=lambda: SmallConvNet().half()), UnsupportedModelError,
                   r"float16 .*use a float32 model; mixed-precision training is the amp option"),
    "bfloat16_model": (dict(model=lambda: SmallConvNet().to(torch.bfloat16)), UnsupportedModelError,
                       r"bfloat16 .*use a float32 model"),
    "loader_generator": (dict(loader=(b for b in [(x16(), y10())])), TypeError,
                         r"loader must be re-iterable.*generator"),
    "loader_iter_dataloader": (dict(loader=iter(tiny_data())), TypeError,
                               r"loader must be re-iterable.*iter\(DataLoader\)"),
    "non_finite_example": (dict(loader=[(x16() * math.nan, y10())]), ValueError,
                           r"outputs on the example inputs .* contain NaN"),
    "finetune_lr_string": (dict(finetune_lr="x"), ValueError, r"option 'finetune_lr' of PAAMConfig must be a number"),
    "lam_inf": (dict(lam=math.inf), ValueError, r"option 'lam' of PAAMConfig .*finite"),
    "lr_inf": (dict(lr=math.inf), ValueError, r"option 'lr' of PAAMConfig .*finite"),
    "slope_inf": (dict(slope=math.inf), ValueError, r"option 'slope' of PAAMConfig .*finite"),
    "lr_bool": (dict(lr=True), ValueError, r"option 'lr' of PAAMConfig must be a number.*got True"),
    "steps_per_epoch_bool": (dict(steps_per_epoch=True), ValueError, r"option 'steps_per_epoch' .*got True"),
    "momentum_two": (dict(momentum=2), ValueError, r"option 'momentum' of PAAMConfig must be a number >= 0 and < 1"),
    "vanilla_max_elements_negative": (dict(vanilla_max_elements=-1), ValueError,
                                      r"option 'vanilla_max_elements' of PAAMConfig must be an int >= 0"),
    "seed_too_large": (dict(seed=2**70), ValueError, r"seed must be None or an int >= 0 and < 2\*\*64"),
    "trained_not_bool": (dict(trained="no"), TypeError, r"trained must be True or False, got 'no'"),
    "pretrained_not_bool": (dict(pretrained="no"), TypeError, r"pretrained must be True or False, got 'no'"),
    "unreachable_ratio_digits": (dict(model=SmallConvNet, ratio=0.999999), BudgetError,
                                 r"ratio 0\.999999 of params cannot be reached"),
}


@pytest.mark.parametrize("method", ["paam"])
@pytest.mark.parametrize("case", list(BAD_INPUT), ids=list(BAD_INPUT))
def test_bad_input_is_rejected_before_training(model, case, method):
    changes, error, pattern = BAD_INPUT[case]
    args = dict(loader=tiny_data(), ratio=0.5, method=method, progress=False)
    args.update(changes)
    if callable(args.get("model")):  # a model class or factory
        torch.manual_seed(0)
        model = args["model"]()
    args.pop("model", None)
    loss = args.get("loss_fn") or Counting()
    args["loss_fn"] = loss
    snap = snapshot(model)
    with pytest.raises(error, match=pattern):
        attnprune.prune(model, **args)
    assert_unchanged(model, snap)
    if isinstance(loss, Counting):
        assert loss.calls <= 1, "training started (only the one-sample check may call loss_fn)"


def narrowed(model: nn.Module, k: int) -> nn.Module:
    """A copy of ``model`` in which every convolution, norm and the head's input keep at most ``k`` channels.

    For the models here that is the smallest model the budget may reach with at least
    ``k`` channels kept per group (1 without rounding, ``round_to`` with it).
    """
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Conv2d):
            new = nn.Conv2d(min(m.in_channels, k), min(m.out_channels, k), m.kernel_size, m.stride, m.padding,
                            bias=m.bias is not None)
        elif isinstance(m, nn.BatchNorm2d):
            new = nn.BatchNorm2d(min(m.num_features, k))
        elif isinstance(m, nn.Linear):
            new = nn.Linear(min(m.in_features, k), m.out_features, bias=m.bias is not None)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)
    return model


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("make, ratio, round_to", [
    (SmallConvNet, 0.98, None),
    (lambda: resnet20(in_channels=1), 0.9, 16),
], ids=["one-channel-per-group", "round_to-16"])
def test_unreachable_ratio_names_the_largest_reachable_one(make, ratio, round_to):
    torch.manual_seed(0)
    model = make()
    smallest = narrowed(model, round_to or 1)
    smallest(x16())  # the narrowed copy is a consistent model
    expected = 1 - n_params(smallest) / n_params(model)
    assert expected < ratio
    with pytest.raises(BudgetError) as info:
        attnprune.prune(model, tiny_data(), ratio, round_to=round_to, progress=False)
    named = float(re.search(r"largest reachable ratio is (\d\.\d+)", str(info.value)).group(1))
    assert named == pytest.approx(expected, abs=5e-4)


def test_model_on_meta_is_rejected():
    with torch.device("meta"):
        model = resnet20(in_channels=1)
    with pytest.raises(ValueError, match=r"model has parameters or buffers on the meta device"):
        attnprune.prune(model, tiny_data(), 0.5, progress=False)
    assert count_hooks(model) == 0
    assert all(p.device.type == "meta" for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_device_without_cuda_is_rejected(model):
    with pytest.raises(ValueError, match=r"device='cuda' but CUDA is not available here"):
        attnprune.prune(model, tiny_data(), 0.5, device="cuda", progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_model_on_cuda_data_on_cpu_is_moved(model):
    model = model.cuda()
    res = attnprune.prune(model, tiny_data(), 0.5, method="l1", warmup_epochs=1, finetune_epochs=1,
                          progress=False, seed=0)
    assert next(res.model.parameters()).device.type == "cuda"


def test_unsupported_architecture():
    model = torchvision.models.shufflenet_v2_x0_5(num_classes=10)
    snap = snapshot(model)
    data = [(torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    with pytest.raises(UnsupportedModelError, match="ShuffleNetV2"):
        attnprune.prune(model, data, 0.5, progress=False)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("method", ["abp", "aswl-structured", "aswl", "l1"])
def test_unreachable_ratio_fails_before_training_for_every_method(method):
    loss = Counting()
    with pytest.raises(BudgetError, match="largest reachable ratio"):
        attnprune.prune(SmallConvNet(), tiny_data(), 0.98, method=method, loss_fn=loss, progress=False)
    assert loss.calls <= 1


# -- divergence and interruption -----------------------------------------------------------
PAAM_FAST = dict(warmup_epochs=1, cycles=1, an_epochs=1, cnn_epochs=1, finetune_epochs=1)
# loss_fn calls with 2 batches per epoch: 1 check, 2-3 warmup, 4 lam calibration, 5-6 an, 7-8 cnn, 9-10 finetune
PHASE_AT_CALL = {2: "warmup", 5: "an", 7: "cnn", 9: "finetune"}


@pytest.fixture
def captured(monkeypatch):
    """Every Instrumented object prune() creates (to check its hooks are gone)."""
    made = []
    real = api.instrument

    def spy(*args, **kwargs):
        inst = real(*args, **kwargs)
        made.append(inst)
        return inst

    monkeypatch.setattr(api, "instrument", spy)
    return made


def _assert_clean(insts):
    for inst in insts:
        assert not inst.active
        assert count_hooks(inst.model) == 0
        assert not any(parametrize.is_parametrized(m) for m in inst.model.modules())


@pytest.mark.parametrize("call, phase", sorted(PHASE_AT_CALL.items()), ids=list(PHASE_AT_CALL.values()))
def test_non_finite_loss_stops_cleanly_naming_phase_and_epoch(model, captured, call, phase):
    snap = snapshot(model)
    loss = Counting(at=call, fail="nan")
    with pytest.raises(TrainingDivergedError, match=rf"loss became nan in phase '{phase}', epoch 1, step 1"):
        attnprune.prune(model, tiny_data(), 0.5, method="paam", loss_fn=loss, progress=False, **PAAM_FAST)
    assert_unchanged(model, snap)
    _assert_clean(captured)


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), RuntimeError("boom")], ids=["ctrl-c", "error"])
@pytest.mark.parametrize("call", [2, 4, 5, 7, 9], ids=["warmup", "calibration", "an", "cnn", "finetune"])
def test_interruption_in_any_phase_leaves_model_untouched(model, captured, call, exc):
    snap = snapshot(model)
    loss = Counting(at=call, fail=exc)
    with pytest.raises(type(exc)):
        attnprune.prune(model, tiny_data(), 0.5, method="paam", loss_fn=loss, progress=False, **PAAM_FAST)
    assert loss.calls == call
    assert_unchanged(model, snap)
    _assert_clean(captured)


@pytest.mark.parametrize("method, options", [
    ("abp", dict(joint_epochs=1, ramp_epochs=1)),
    ("aswl", dict(joint_epochs=1, ramp_epochs=1)),
    ("aswl-structured", dict(joint_epochs=1, ramp_epochs=1, finetune_epochs=0)),
])
def test_interruption_removes_method_hooks_and_parametrisations(model, captured, method, options):
    snap = snapshot(model)
    with pytest.raises(KeyboardInterrupt):
        attnprune.prune(model, tiny_data(), 0.5, method=method, progress=False,
                        loss_fn=Counting(at=3, fail=KeyboardInterrupt()), **options)
    assert_unchanged(model, snap)
    _assert_clean(captured)
