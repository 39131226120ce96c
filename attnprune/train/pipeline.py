"""``attnprune.prune()``: the one call.

The pipeline: check the arguments (:mod:`attnprune.train.checks`) → copy the
model → instrument it → check the ratio is reachable → attach the method → the
stages of :mod:`attnprune.train.stages`: the method's phases → channel removal
(select, commit, detach, remove the closed channels, checked against the gated
model) → fine-tuning → report. The user's model is never modified; any error, or
Ctrl-C, leaves it exactly as it was. Optional checkpoints
(:mod:`attnprune.train.checkpoint`) let an interrupted run resume; under
``torchrun`` it trains with DistributedDataParallel
(:mod:`attnprune.train.distributed`).
"""

from __future__ import annotations

import copy
import functools
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn

from .._batch import to_device as _to, unpack_batch
from ..core.budget import check_ratio, check_round_to, check_target
from ..core.groups import check_untied
from ..core.instrument import instrument
from ..methods import get_method, make_config
from ..methods.base import Budget, Context, Phase, PruningMethod
from . import checks, data_checks, distributed as dist_util, exactness
from .checkpoint import Checkpointer
from .fingerprint import ignored_names, run_fingerprint
from .result import GroupReport, PruneReport, PruneResult
from .runner import Runner, evaluate
from .scoring import Metric, check_metric
from .seeding import seed_run
from .stages import ChannelRemoval, Checkpoints, FineTune, MethodPhases, RunRecord

__all__ = ["prune", "PruneResult", "PruneReport", "GroupReport", "DEFAULT_METHOD"]

DEFAULT_METHOD = "paam"


def prune(
    model: nn.Module,
    loader: Iterable,
    ratio: float = 0.5,
    method: str = DEFAULT_METHOD,
    target: str = "params",
    *,
    example_inputs=None,
    eval_loader: Iterable | None = None,
    eval_metric: Metric | None = None,
    loss_fn: Callable | None = None,
    device=None,
    ignored_layers=None,
    round_to: int | None = None,
    trained: bool = False,
    pretrained: bool | None = None,
    seed: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    distributed: bool | None = None,
    **options: Any,
) -> PruneResult:
    """Learn which channels to remove, remove them, and fine-tune.

    Every argument is checked before training starts: a bad one raises an error
    naming it and its valid values, and so does a ratio the model cannot reach
    (a dry budget search runs right after instrumenting). The user's model is
    never modified: training runs on a copy, and any error, or Ctrl-C, removes
    every hook and leaves the model exactly as it was.

    Args:
        model: The CNN to prune, in float32. It is copied; the original is never
            modified. A ``torch.compile``d model is pruned through its original
            module (with a warning); a model whose modules share a parameter
            (tied weights) is refused.
        loader: Training data, yielding ``(inputs, targets)``. Under
            DistributedDataParallel give it a ``DistributedSampler`` (its epoch
            is set before every epoch).
        ratio: Fraction of the model's parameters to remove (of its MACs per
            sample with ``target="macs"``), in (0, 1), counted over the whole model
            as fvcore counts it; met within one percentage point.
        method: A registered method: see :func:`attnprune.available_methods`.
        target: ``"params"`` or ``"macs"``.
        example_inputs: One batch for tracing (default: first sample of ``loader``).
        eval_loader: Optional held-out data; accuracies are then reported. It is
            checked before training like ``loader`` (re-iterable, non-empty, and
            its first samples scored by ``eval_metric``).
        eval_metric: ``eval_metric(outputs, targets)`` per batch of ``eval_loader``,
            returning ``(correct, total)`` or a mean score in [0, 1]; the reported
            "accuracy" is then ``100 * sum(correct) / sum(total)`` (see
            :mod:`attnprune.train.scoring`). Default: top-1 accuracy, which
            takes class-index or one-hot targets and refuses other shapes.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar; default cross-entropy.
        device: Where to train (default: the model's device). Batches are moved there.
        ignored_layers: Modules (of ``model``) or qualified names whose output
            channels are kept.
        round_to: Keep a multiple of this many channels per group (±2 points).
        trained: The model is trained already: skip the warm-up (no weights are
            downloaded; this is not torchvision's ``pretrained``).
        pretrained: Deprecated alias of ``trained`` (attnprune 0.1).
        seed: Seeds torch's generators (CPU and CUDA) and the loader's own
            generator, if it has one, for a repeatable run: the same seed gives
            the same masks and the same pruned model on the same machine. Before
            the run's ``k``-th training epoch the loader's generators (or, when it
            has none, torch's global generator) are reseeded from ``(seed, k)``,
            so the data order of every epoch depends only on them (rule:
            :mod:`attnprune.train.seeding`).
        progress: Show progress bars (rank 0 only).
        checkpoint_dir: Folder for ``checkpoint.pt``, written atomically at the end
            of every epoch and after the channels are removed (rank 0 only); see
            :mod:`attnprune.train.checkpoint`.
        resume: Continue from the checkpoint in ``checkpoint_dir`` (a fresh start
            when there is none). The arguments must be the same as the run that
            wrote it; the result then equals an uninterrupted run's bit for bit.
        distributed: Train with DistributedDataParallel over the default process
            group; None (default) does so when one with more than one process is
            initialised. False under a process group: every process prunes on its
            own (checkpoints are still written by rank 0 only). See
            :mod:`attnprune.train.distributed`.
        **options: The method's options (its config dataclass's fields, e.g.
            ``warmup_epochs=2``); an unknown option raises listing the valid ones.

    Returns:
        A :class:`PruneResult` with the pruned model and its report (the same on
        every rank).

    Raises:
        TypeError: An argument of the wrong type (the message names it).
        ValueError: A bad argument (the message names it and the valid range or
            choices), a loader that is empty or does not yield ``(inputs,
            targets)`` the model and ``loss_fn`` accept, or a checkpoint of
            another run.
        attnprune.UnsupportedModelError: The model cannot be gated or pruned exactly
            (found by a dry finalize on a copy right after instrumenting: a
            hard-coded channel count, a per-channel buffer), has tied weights or
            half/bfloat16 parameters, or has no prunable channel group (e.g. every
            group is ignored).
        OSError: ``checkpoint_dir`` cannot be written (before training).
        attnprune.errors.BudgetError: The ratio cannot be reached (the message gives
            the largest reachable one).
        attnprune.TrainingDivergedError: The loss became NaN or infinite (the
            message names the phase and epoch); nothing is returned.
    """
    started = time.perf_counter()
    checks.check_model(model)
    model = exactness.unwrap_compiled(model)
    exactness.check_float32(model)
    check_untied(model)
    budget = Budget(check_ratio(ratio), check_target(target), check_round_to(round_to))
    method_cls = get_method(checks.check_method_name(method))
    config = make_config(method_cls, options)
    loss_fn = checks.resolve_loss_fn(loss_fn)
    checks.check_seed(seed)
    trained = checks.resolve_trained(trained, pretrained)
    checks.check_resume(resume, checkpoint_dir)
    eval_metric = check_metric(eval_metric)
    if eval_loader is not None:
        checks.check_iterable("eval_loader", eval_loader)
        data_checks.check_reiterable("eval_loader", eval_loader)
    ignored = ignored_names(model, ignored_layers)
    use_dist = checks.resolve_distributed(distributed)
    device = checks.resolve_device(device, model)
    if seed is not None:
        seed_run(seed, loader)
    data_checks.check_reiterable("loader", loader)
    first_x, first_y = checks.first_batch(loader)
    explicit = example_inputs is not None
    example_inputs = _to(checks.resolve_example_inputs(example_inputs, first_x), device)

    work = copy.deepcopy(model).to(device)
    checks.check_feeds(work, example_inputs, explicit, first_x, first_y, loss_fn, device)
    if eval_loader is not None:
        data_checks.check_eval_loader(eval_loader, work, device, eval_metric)
    dry = exactness.dry_copy(work) if method_cls.structured else None
    inst = instrument(work, example_inputs, ignored_layers=ignored)
    algo: PruningMethod = method_cls(config)
    try:
        if dry is not None:  # a dry finalize: an inexact model fails now, not after training
            exactness.check_exact(dry, example_inputs, ignored)
            dry = None
        if method_cls.structured:
            checks.check_reachable(inst, budget)
        params_before, macs_before = inst.cost.dense_params, inst.cost.dense_macs
        runner = Runner(loader=loader, loss_fn=loss_fn, device=device, eval_loader=eval_loader,
                        steps_per_epoch=config.steps_per_epoch, progress=progress, distributed=use_dist,
                        seed=seed, eval_metric=eval_metric)
        steps = runner.steps_in_epoch()
        if use_dist:
            checks.check_distributed_loader(loader, steps)
        batches = functools.partial(_device_batches, loader, device)
        algo.attach(inst, budget, Context(batches=batches, loss_fn=loss_fn, seed=seed, steps_per_epoch=steps))
        if use_dist:
            dist_util.sync_module(work)
            dist_util.sync_method(algo)
        checkpointer = None
        if checkpoint_dir is not None:
            fingerprint = run_fingerprint(method, budget, config, trained, seed, model, steps, use_dist,
                                          ignored or [], loader)
            checkpointer = Checkpointer(checkpoint_dir, fingerprint, loader, distributed=use_dist)

        scorer = None if eval_loader is None else functools.partial(
            _evaluate_on, eval_loader=eval_loader, device=device, distributed=use_dist, metric=eval_metric)
        record = RunRecord(runner, started=started)
        ckpts = Checkpoints(checkpointer, record)
        phases = algo.phases(trained=trained)
        training = MethodPhases(work, inst, algo, phases, runner, record, ckpts, scorer)
        removal = ChannelRemoval(work, inst, algo, use_dist)
        finetune = FineTune(_finetune_phase(config), len(phases), runner, removal, ckpts)

        # the stages: method phases -> channel removal -> fine-tuning, each resumable
        saved = ckpts.load() if resume else None
        if saved is not None:
            record.load_state_dict(saved)
        if saved is None or saved["stage"] == "train":
            if saved is not None:
                training.load_state_dict(saved)
            training.run()
            removal.run()
            record.acc_removal = scorer(removal.pruned) if scorer is not None else None
            finetune.save()
        else:  # resuming after the removal
            removal.load_state_dict(saved)
            finetune.load_state_dict(saved)
        pruned = finetune.run()
        acc_after = scorer(pruned) if scorer is not None else None
    except BaseException:
        algo.detach()
        inst.remove()
        raise
    return _result(model, method, budget, inst, removal, runner, record, params_before, macs_before, acc_after)


def _device_batches(loader: Iterable, device):
    """The loader's ``(inputs, targets)`` on ``device`` (the methods' ``Context.batches``)."""
    for batch in loader:
        x, y = unpack_batch(batch)
        yield _to(x, device), _to(y, device)


def _evaluate_on(model: nn.Module, *, eval_loader: Iterable, device, distributed: bool,
                 metric: Metric | None = None) -> float:
    return evaluate(model, eval_loader, device, distributed=distributed, metric=metric)


def _finetune_phase(config) -> Phase:
    """The fine-tuning phase from the method's config (``finetune_lr`` defaults to ``lr``)."""
    return Phase(name="finetune", epochs=config.finetune_epochs, lr=config.finetune_lr or config.lr,
                 optimizer=config.optimizer, momentum=config.momentum, weight_decay=config.weight_decay)


def _result(model, method, budget, inst, removal, runner, record, params_before, macs_before,
            acc_after) -> PruneResult:
    selection, pruned = removal.selection, removal.pruned
    masks = inst.masks()
    report = PruneReport(
        method=method,
        ratio_requested=budget.ratio,
        ratio_achieved=selection.ratio,
        target=budget.target,
        params_before=params_before,
        params_after=selection.params,
        macs_before=macs_before,
        macs_after=selection.macs,
        groups=[GroupReport(g.name, int(m.sum()), g.n_channels) for g, m in zip(inst.groups, masks)],
        history=runner.history,
        accuracy_before_pruning=record.acc_before,
        accuracy_at_removal=record.acc_removal,
        accuracy_after=acc_after,
        round_to=budget.round_to,
        seconds=record.seconds(),
        method_report=removal.method_report,
    )
    pruned.train(model.training)
    return PruneResult(model=pruned, report=report, pruning_history=inst.pruning_history or [], masks=masks)

