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
import dataclasses
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch.nn as nn

from .._batch import to_device as _to, unpack_batch
from ..core.budget import check_ratio, check_round_to, check_target
from ..core.frozen import frozen_layers
from ..core.instrument import instrument
from ..core.limits import GroupLimits, set_group_limits
from ..core.tied import check_untied
from ..deploy.ort_session import check_provider
from ..errors import BudgetError
from ..methods import get_method, make_config
from ..methods.base import Budget, Context, Phase, PruningMethod
from . import checks, data_checks, diagnostics, distributed as dist_util, exactness
from .amp import check_amp
from .batches import check_batch_fn, map_loader, resolve_batch_fn
from .callbacks import resolve_callbacks
from .checkpoint import Checkpointer
from .distill import AUTO, Distillation, Distiller, auto_distillation, check_distillable, resolve_distill
from .dry_run import DryRunReport, dry_run as plan_run
from .fingerprint import ignored_names, run_fingerprint
from .finish import build_result
from .latency_target import attach_latency_model, measure_latency, reach_at_finer_multiple
from .result import GroupReport, PruneReport, PruneResult
from .runner import Runner, evaluate
from .scoring import Metric, check_metric
from .seeding import seed_run
from .stages import ChannelRemoval, Checkpoints, FineTune, MethodPhases, RunRecord
from .trained_lr import TRAINED_LR, trained_lr as _trained_lr

__all__ = ["prune", "PruneResult", "PruneReport", "GroupReport", "DryRunReport", "DEFAULT_METHOD", "TRAINED_LR"]

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
    round_to: int | str = "auto",
    provider: str = "cpu",
    latency_batch: int = 1,
    latency_threads: int | None = None,
    trained: bool = False,
    pretrained: bool | None = None,
    seed: int | None = None,
    progress: bool = True,
    checkpoint_dir: str | os.PathLike | None = None,
    resume: bool = False,
    distributed: bool | None = None,
    min_keep: int | None = None,
    max_group_ratio: float | None = None,
    batch_fn: Callable | None = None,
    callbacks: Iterable[Callable] | None = None,
    on_epoch_end: Callable | None = None,
    amp: str | None = None,
    distill: bool | str | Distillation | None = AUTO,
    dry_run: bool = False,
    **options: Any,
) -> PruneResult | DryRunReport:
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
            sample with ``target="macs"``, of its ONNX Runtime latency with
            ``target="latency"``), in (0, 1), counted over the whole model as
            fvcore counts it; met within one percentage point with free channel
            counts (``round_to=1``), within two with a multiple (the default
            ``"auto"`` rounds), as the budget search computes it (latency: as
            the latency model predicts it).
        method: A registered method: see :func:`attnprune.available_methods`.
        target: ``"params"``, ``"macs"`` or ``"latency"`` (the dense model's
            latency, measured on this machine at ``latency_batch`` samples and
            ``latency_threads`` threads, is the whole; a latency model built
            once per run, and cached on disk, predicts the pruned one for the
            budget search; the pruned model is measured after removal and the
            report's ``latency`` gives both). Unstructured methods (``aswl``)
            cannot serve it and raise before training.
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
        round_to: Keep a multiple of this many channels per group (ratio met
            within ±2 points). ``"auto"`` (default): the multiple the deployment
            target's kernels want (:func:`attnprune.deploy.channels.channel_multiple`
            of ``provider`` and this machine's CPU flags: 16 with AVX-512, 8 with
            AVX2 or CUDA, else 4; free counts for an unstructured method); an
            int wins; ``1`` (or None, as in 0.1) gives free counts (±1 point).
            Where the auto multiple cannot reach ``ratio`` it falls back, with a
            warning: to free counts for params and MACs, to finer multiples for
            latency (halved until the ratio is reachable, each grid timed)
            (:func:`attnprune.train.latency_target.reach_at_finer_multiple`).
            The report records the value used and what it was chosen from.
        provider: The deployment target ``"cpu"`` (ONNX Runtime's CPU provider,
            default; the CPU is this machine's) or ``"cuda"``; it decides
            ``round_to="auto"`` and where a latency target is measured. It is
            not the training device (``device``).
        latency_batch: Batch size at which ``target="latency"`` is measured (default 1).
        latency_threads: ONNX Runtime intra-op threads for ``target="latency"``
            (default None: every CPU this process may use, as
            :func:`attnprune.benchmark`).
        trained: The model is trained already: skip the warm-up (no weights are
            downloaded; this is not torchvision's ``pretrained``), and train the
            CNN's phases and fine-tuning with SGD at :data:`TRAINED_LR` (0.01)
            unless ``lr`` is given.
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
        min_keep: Channels every group keeps at least (None: one, or one
            ``round_to`` multiple); see :mod:`attnprune.core.limits`.
        max_group_ratio: The largest fraction of any group's channels removed,
            in (0, 1) (torch-pruning's ``max_pruning_ratio``; None: no cap). Both
            limits bind the budget search and the dry reachability check; the
            report names the groups that hit one (``GroupReport.limit``).
        batch_fn: ``batch_fn(batch) -> (inputs, targets)`` applied to every batch
            of ``loader`` and ``eval_loader`` (e.g. dict batches:
            ``lambda b: (b["pixel_values"], b["labels"])``); checked on the first
            batch before training.
        callbacks: Callables called as ``callback(record)`` once per training
            epoch with its :class:`~attnprune.train.runner.EpochRecord` (rank 0
            only); every record also goes to the ``"attnprune"`` logger (INFO).
            See :mod:`attnprune.train.callbacks`.
        on_epoch_end: One more such callable (called after ``callbacks``).
        amp: Mixed precision for the training steps: None (float32, default),
            ``"bfloat16"`` (CPU or CUDA; emulated, so slower, on CPUs without
            AVX-512 BF16) or ``"float16"`` (CUDA, with a GradScaler). Evaluation and
            the pruned-equals-gated check run in float32. See :mod:`attnprune.train.amp`.
        distill: Knowledge distillation (Hinton et al., 2015) from the network as
            it is when the first method phase starts (after the warm-up), frozen:
            ``"auto"`` (default): ``Distillation()`` for a trained model
            (``trained=True``) when ``loss_fn`` is the default and the model
            returns class logits, else off (from scratch the teacher would be the
            briefly warmed-up network, which measured worse); None or False: off;
            True: ``Distillation()`` (temperature 4, weight 0.5); or
            ``attnprune.Distillation(temperature=T, weight=w)``.
            The phases that train the CNN (not the warm-up, not attention-only
            phases) and fine-tuning then minimise ``(1-w)·loss_fn + w·T²·KL``
            of the softened logits (the history's ``loss`` is that objective);
            the model must return a logits tensor ``(N, classes, ...)``. The
            teacher is never part of the pruned model and is dropped when the
            run ends; ``report.distill`` records the setting. See
            :mod:`attnprune.train.distill`.
        dry_run: Check, instrument, time a few steps on the copy, print the
            phases, passes and an estimated time, and return a
            :class:`~attnprune.train.dry_run.DryRunReport` without training.
        **options: The method's options (its config dataclass's fields, e.g.
            ``warmup_epochs=2``); an unknown option raises listing the valid ones.

    Returns:
        A :class:`PruneResult` with the pruned model and its report (the same on
        every rank); with ``dry_run=True`` a :class:`DryRunReport`.

    Warns:
        UserWarning: The learned scores did not separate, or the accuracy right
            after removal is near chance (also in ``report.warnings``; see
            :mod:`attnprune.train.diagnostics`).

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
    ratio, target, provider = check_ratio(ratio), check_target(target), check_provider(provider)
    method_cls = get_method(checks.check_method_name(method))
    multiple, round_source = checks.resolve_round_to(round_to, provider, structured=method_cls.structured)
    budget = Budget(ratio, target, check_round_to(multiple))
    checks.check_target_support(method_cls, method, budget.target)
    lat_batch, lat_threads = checks.check_latency_options(latency_batch, latency_threads)
    limits = GroupLimits(min_keep, max_group_ratio)
    trained = checks.resolve_trained(trained, pretrained)
    config = _trained_lr(make_config(method_cls, options), options, trained)
    custom_loss = loss_fn is not None
    loss_fn = checks.resolve_loss_fn(loss_fn)
    checks.check_seed(seed)
    checks.check_resume(resume, checkpoint_dir)
    eval_metric = check_metric(eval_metric)
    distill = resolve_distill(distill)
    if not isinstance(dry_run, bool):
        raise TypeError(f"dry_run must be True or False, got {dry_run!r}")
    user_callbacks = resolve_callbacks(callbacks, on_epoch_end)
    batch_fn = resolve_batch_fn(batch_fn)
    if eval_loader is not None:
        checks.check_iterable("eval_loader", eval_loader)
        data_checks.check_reiterable("eval_loader", eval_loader)
    ignored = ignored_names(model, ignored_layers)
    use_dist = checks.resolve_distributed(distributed)
    device = checks.resolve_device(device, model)
    amp = check_amp(amp, device)
    data_checks.check_reiterable("loader", loader)  # before any batch is drawn
    if batch_fn is not None:
        checks.check_iterable("loader", loader)
        check_batch_fn(loader, batch_fn, "loader")
        if eval_loader is not None:
            check_batch_fn(eval_loader, batch_fn, "eval_loader")
    loader, eval_loader = map_loader(loader, batch_fn), map_loader(eval_loader, batch_fn)
    if seed is not None:
        seed_run(seed, loader)
    first_x, first_y = checks.first_batch(loader)
    explicit = example_inputs is not None
    example_inputs = _to(checks.resolve_example_inputs(example_inputs, first_x), device)

    work = copy.deepcopy(model).to(device)
    checks.check_feeds(work, example_inputs, explicit, first_x, first_y, loss_fn, device)
    if distill == AUTO:
        distill = auto_distillation(work, example_inputs, custom_loss, trained)
    elif distill is not None:
        check_distillable(work, example_inputs)
    if eval_loader is not None:
        data_checks.check_eval_loader(eval_loader, work, device, eval_metric)
    frozen = frozen_layers(work)
    dry = exactness.dry_copy(work) if method_cls.structured else None
    inst = instrument(work, example_inputs, ignored_layers=ignored)
    set_group_limits(inst.cost, limits)
    algo: PruningMethod = method_cls(config)
    latency_model = distiller = None
    try:
        if dry is not None:  # a dry finalize: an inexact model fails now, not after training
            exactness.check_exact(dry, example_inputs, ignored)
            dry = None
        if budget.target == "latency":
            latency_model = attach_latency_model(inst, batch=lat_batch, threads=lat_threads, provider=provider,
                                                 multiple=multiple)
        if method_cls.structured:
            try:
                checks.check_reachable(inst, budget, limits)
            except BudgetError as exc:
                if round_source["requested"] != "auto" or budget.round_to is None:
                    raise
                if budget.target == "latency":  # finer multiples, each grid timed again
                    budget, latency_model, round_source = reach_at_finer_multiple(
                        inst, budget, limits, exc, round_source, batch=lat_batch, threads=lat_threads,
                        provider=provider)
                    multiple = budget.round_to
                else:  # "auto" must not make a small model unprunable: free counts, said out loud
                    checks.check_reachable(inst, dataclasses.replace(budget, round_to=None), limits)
                    warnings.warn(f"round_to='auto' chose multiples of {multiple} for this {provider} target, but "
                                  f"{exc}; using free channel counts instead (slower kernels on this target)",
                                  stacklevel=2)
                    round_source = {**round_source,
                                    "fallback": f"free counts (unreachable with multiples of {multiple})"}
                    budget, multiple = dataclasses.replace(budget, round_to=None), 1
        params_before, macs_before = inst.cost.dense_params, inst.cost.dense_macs
        runner = Runner(loader=loader, loss_fn=loss_fn, device=device, eval_loader=eval_loader,
                        steps_per_epoch=config.steps_per_epoch, progress=progress, distributed=use_dist,
                        seed=seed, eval_metric=eval_metric, callbacks=user_callbacks, amp=amp)
        steps = runner.steps_in_epoch()
        if use_dist:
            checks.check_distributed_loader(loader, steps)
        batches = functools.partial(_device_batches, loader, device)
        algo.attach(inst, budget, Context(batches=batches, loss_fn=loss_fn, seed=seed, steps_per_epoch=steps))
        if use_dist:
            dist_util.sync_module(work)
            dist_util.sync_method(algo)
        checkpointer = None
        if checkpoint_dir is not None and not dry_run:
            fingerprint = run_fingerprint(method, budget, config, trained, seed, model, steps, use_dist,
                                          ignored or [], loader)
            if limits:
                fingerprint["limits"] = dataclasses.asdict(limits)
            if budget.target == "latency":
                fingerprint["latency"] = {"batch": lat_batch, "threads": lat_threads, "provider": provider}
            if distill is not None:
                fingerprint["distill"] = dataclasses.asdict(distill)
            checkpointer = Checkpointer(checkpoint_dir, fingerprint, loader, distributed=use_dist)

        scorer = None if eval_loader is None else functools.partial(
            _evaluate_on, eval_loader=eval_loader, device=device, distributed=use_dist, metric=eval_metric)
        record = RunRecord(runner, started=started)
        phases = algo.phases(trained=trained)
        if distill is not None and not dry_run:
            distiller = Distiller(distill, model, device, phases)
        ckpts = Checkpoints(checkpointer, record, distiller)
        runner.phase_total = len(phases) + (1 if config.finetune_epochs > 0 else 0)
        if dry_run:
            plan = plan_run(work, inst, algo, method, phases, _finetune_phase(config), runner, frozen)
            print(plan.summary())
            algo.detach()
            inst.remove()
            return plan
        training = MethodPhases(work, inst, algo, phases, runner, record, ckpts, scorer, distiller)
        removal = ChannelRemoval(work, inst, algo, use_dist)
        finetune = FineTune(_finetune_phase(config), len(phases), runner, removal, ckpts, distiller)
        learned = None

        # the stages: method phases -> channel removal -> fine-tuning, each resumable
        saved = ckpts.load() if resume else None
        if saved is not None:
            record.load_state_dict(saved)
            if distiller is not None:
                distiller.load_state_dict(saved)
        if saved is None or saved["stage"] == "train":
            if saved is not None:
                training.load_state_dict(saved)
            training.run()
            learned = diagnostics.learned_scores(algo)
            removal.run()
            record.acc_removal = scorer(removal.pruned) if scorer is not None else None
            finetune.save()
        else:  # resuming after the removal
            removal.load_state_dict(saved)
            finetune.load_state_dict(saved)
        pruned = finetune.run()
        acc_after = scorer(pruned) if scorer is not None else None
        separation = diagnostics.score_separation(algo, learned, removal.selection.masks)
        chance = diagnostics.chance_accuracy(pruned, example_inputs) if record.acc_removal is not None else None
        latency = None
        if latency_model is not None:
            latency = measure_latency(latency_model, inst.masks(), model, pruned, inst.example_inputs,
                                      batch=lat_batch, threads=lat_threads, provider=provider,
                                      channel_multiple=multiple)
    except BaseException:
        algo.detach()
        inst.remove()
        raise
    finally:
        set_group_limits(inst.cost, None)
        if distiller is not None:
            distiller.release()  # the teacher goes with the run
    result = build_result(model, method, budget, inst, removal, runner, record, acc_after,
                          sizes=(params_before, macs_before), limits=limits, frozen=frozen,
                          structured=method_cls.structured, separation=separation, chance=chance,
                          round_source=round_source, latency=latency,
                          distill=None if distiller is None else distiller.report(phases, finetune.phase))
    if dist_util.is_main():
        diagnostics.emit(result.report.warnings)
    return result



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
