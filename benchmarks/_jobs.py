"""The work of the quality benchmark's worker processes: dense starting points and arms.

Each job is a plain dict (picklable, so it runs the same inline or in a spawned
single-thread worker) and returns a plain dict.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import torch

import attnprune
from attnprune.train.runner import Runner, evaluate

from _arms import WARMUP_PASSES, Arm, phase_plan
from _dense import Setup, build_model, dense_checkpoint, dense_phase, loaders, splits

__all__ = ["ORDER_STRIDE", "init_worker", "dense_job", "arm_job"]

#: Epochs by which each ``--order`` step shifts the training sampler's epoch index: the same
#: checkpoint then sees another data order (no epoch of another order is ever repeated).
ORDER_STRIDE = 1000

_DATA: dict = {}


def init_worker(threads: int) -> None:
    """One worker process: ``threads`` torch threads (1 for side-by-side workers)."""
    torch.set_num_threads(threads)


def _data(setup: Setup) -> dict:
    key = (setup.train_size, setup.val_size, setup.test_size)
    if key not in _DATA:
        _DATA.clear()
        _DATA[key] = splits(setup)
    return _DATA[key]


def dense_job(job: dict) -> dict:
    """Make (or read from the cache) one seed's dense starting point."""
    setup = Setup(**job["setup"])
    t0 = time.perf_counter()
    path, info = dense_checkpoint(setup, job["seed"], cache=job["cache"], data=_data(setup))
    return {"seed": job["seed"], "path": str(path), "info": info, "seconds": time.perf_counter() - t0}


def _kept(report) -> dict:
    return {g.name: [g.kept, g.total] for g in report.groups}


def _closed(report, masks) -> dict:
    """Indices of the closed channels of every group (for overlaps between runs)."""
    return {g.name: [i for i, keep in enumerate(m.tolist()) if not keep] for g, m in zip(report.groups, masks)}


def _scalars(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (bool, int, float, str)) or v is None:
            out[k] = v
        elif isinstance(v, (list, tuple)) and len(v) <= 64 and all(isinstance(x, (int, float)) for x in v):
            out[k] = list(v)
    return out


def arm_job(job: dict) -> dict:
    """Prune a copy of the seed's starting point with one arm, train its passes, evaluate.

    Returns:
        The row's measured fields (accuracy, params and MACs before and after,
        passes, CNN optimizer steps, wall and CPU seconds of the arm's training,
        kept channels, method report).
    """
    torch.set_num_threads(job["threads"])
    setup = Setup(**job["setup"])
    a = Arm(**job["arm"])
    seed = job["seed"]
    offset = (setup.dense_passes if setup.start == "trained" else 0) + ORDER_STRIDE * job.get("order", 0)
    L = loaders(setup, seed, offset, _data(setup))
    model = build_model(setup, seed)
    model.load_state_dict(torch.load(job["checkpoint"], weights_only=True))
    example = next(iter(L["train"]))[0][:1]
    steps = len(L["train"])
    plan = phase_plan(a, model, example, job["ratio"] or 0.5, job["target"] or "params", steps)
    expected = job["passes"] + (0 if a.trained else WARMUP_PASSES)
    if plan["passes"] != expected:
        raise RuntimeError(f"arm {a.name} would train {plan['passes']} passes, not the {expected} every arm gets")
    t0, c0 = time.perf_counter(), time.process_time()
    params_before = sum(p.numel() for p in model.parameters())
    if a.is_ceiling:
        runner = Runner(loader=L["train"], loss_fn=torch.nn.functional.cross_entropy, progress=False)
        phase = dense_phase(setup, a.options["epochs"], "ceiling")
        phase.lr = a.options["lr"]
        runner.run(model, phase)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        from attnprune.deploy.metrics import count_macs, count_params

        macs, params = count_macs(model, example), count_params(model)
        out = {"accuracy": evaluate(model, L[job["eval"]]), "params_before": params, "params_after": params,
               "macs_before": macs, "macs_after": macs, "ratio_achieved": 0.0, "method_report": {},
               "config": {"phase": asdict(phase)}, "normalize": None}
    else:
        res = attnprune.prune(model, L["train"], job["ratio"], method=a.method, target=job["target"], round_to=1,
                              trained=a.trained, seed=seed, progress=False, example_inputs=example, **a.options)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        r = res.report
        out = {"accuracy": evaluate(res.model, L[job["eval"]]), "params_before": r.params_before,
               "params_after": r.params_after, "macs_before": r.macs_before, "macs_after": r.macs_after,
               "ratio_achieved": r.ratio_achieved, "kept": _kept(r),
               "closed": _closed(r, res.masks), "method_report": _scalars(r.method_report),
               "config": plan.pop("config"), "normalize": plan.pop("normalize"),
               "history": [[h.phase, h.epoch, round(h.loss, 5)] for h in r.history], "distill": r.distill}
    out["params_removed"] = 1.0 - out["params_after"] / out["params_before"]
    out["macs_removed"] = 1.0 - out["macs_after"] / out["macs_before"]
    out["dense_params"] = params_before
    out.update(passes=plan["passes"], cnn_epochs=plan["cnn_epochs"], cnn_steps=plan["cnn_steps"],
               phases=plan["phases"], steps_per_epoch=steps, seconds=seconds, cpu_seconds=cpu,
               threads=torch.get_num_threads())
    return out
