"""Ray Tune experiments of tuned jobs (`tune:` blocks; the trial logic is `ddbench.tuning`).

The scheduler starts `tune_task` as one unit per tuned job once its prerequisites are published;
the unit holds the bundles of `concurrent_trials` trials for the whole experiment, so Tune draws
from the same pool of slots as every other unit. Each trial (`tune_trial`) is the Ray Train
driver of its own trial job (the Train V2 idiom: `fit_distill`), skipped when its artifact
exists, then scores it on the val split with its selection cells, run inside the trial's share
(as many at once as the share holds eval cells). The best complete trial's artifact is published
as the tuned job's (`publish_choice`), and `tune_task` returns the job's outcome.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from typing import Any

import ray
from ray import tune
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ddbench.artifact import META_FILE, record_files
from ddbench.plan import DistillJob, EvalCell
from ddbench.runner.cluster import cell_task
from ddbench.runner.resources import distill_bundles, eval_bundle, worker_slots
from ddbench.runner.train import Outcome, fit_distill
from ddbench.runner.work import artifact_done, artifact_rel, cell_done, local_artifact
from ddbench.schema import read_rows
from ddbench.seeding import derive_seed
from ddbench.selection import TrialScore, choose
from ddbench.spec import DistillResources, EvalResources, TuneSpec
from ddbench.storage import Store
from ddbench.tuning import selection_cells, trial_count, trial_job


def search_space(space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A suite's `tune.space` as Ray Tune search-space objects."""
    makers = {
        "grid": tune.grid_search,
        "choice": tune.choice,
        "uniform": lambda v: tune.uniform(*v),
        "loguniform": lambda v: tune.loguniform(*v),
        "randint": lambda v: tune.randint(*v),
    }
    return {
        key: makers[kind](values) for key, dist in space.items() for kind, values in dist.items()
    }


def concurrent_trials(
    spec: TuneSpec, resources: DistillResources, nodes: list[dict[str, float]], experiments: int
) -> int:
    """Trials an experiment runs at once: `max_concurrent_trials`, else its share of the distill
    runs the cluster holds (`worker_slots` // workers), split between the run's `experiments`
    tuned jobs; never more than it has trials."""
    if spec.max_concurrent_trials:
        wanted = spec.max_concurrent_trials
    else:
        wanted = max(1, worker_slots(resources, nodes) // resources.workers // experiments)
    return max(1, min(wanted, trial_count(spec)))


def cells_at_once(distill: DistillResources, evaluation: EvalResources) -> int:
    """How many eval cells fit in the share of one trial (its Train run's bundles), at least
    one: a trial scores its models inside what it holds."""
    held: dict[str, float] = {}
    for bundle in distill_bundles(distill):
        for key, value in bundle.items():
            held[key] = held.get(key, 0.0) + value
    cell = eval_bundle(evaluation)
    return max(1, min(int(held.get(key, 0.0) // value) for key, value in cell.items()))


def tune_task(
    job: DistillJob,
    real_refs: list[Any],
    store: Store,
    suite: Any,
    max_failures: int,
    sha: str,
    force: bool,
    trials_at_once: int,
    has_driver: bool,
    progress: Any = None,
) -> dict[str, Outcome]:
    """A Ray task running the Tune experiment of a tuned job, then publishing the chosen
    trial's artifact as the job's; `force` recomputes every trial; the trials' progress lines
    go to `progress` (the run's `ProgressInbox`)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    spec = job.tune
    assert spec is not None, "tune_task of a job without a tune block"
    scheduler = None
    if spec.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        # a trial reports once per scored model: ASHA drops weak trials after their first
        # models instead of scoring all `eval_seeds` (distillation itself is not cut short)
        scheduler = ASHAScheduler(
            time_attr="training_iteration", max_t=spec.eval_seeds, grace_period=1
        )
    trainable = tune.with_parameters(
        tune_trial,
        job=job,
        real_refs=real_refs,
        store=store,
        suite=suite,
        max_failures=max_failures,
        sha=sha,
        force=force,
        progress=progress,
    )
    # Tune registers a trainable under its name in a registry shared by the whole Ray job: the
    # tuned jobs' experiments run side by side, so each needs its own name, or their trials
    # run one another's jobs
    trainable.__name__ = f"ddbench_trial_{job.job_id}"
    # the trial only drives (its Train run and cells hold the resources the scheduler gave this
    # experiment): Tune needs a non-empty bundle, and 1 MiB of memory holds nothing back (plus,
    # on a cluster whose head carries the custom resource `driver`, a sliver of it: cluster/)
    held = {"cpu": 0, "memory": 2**20, **({"driver": 0.01} if has_driver else {})}
    seed = derive_seed(job.suite_seed, "tune", job.job_id) % 2**32
    tuner = tune.Tuner(
        tune.with_resources(trainable, held),
        param_space=search_space(spec.space),
        tune_config=tune.TuneConfig(
            metric=spec.metric,
            mode=spec.mode,
            num_samples=spec.num_samples,
            scheduler=scheduler,
            # seeded samples, not the clock; the concurrency limit goes here, since Tune ignores
            # max_concurrent_trials beside a SearchGenerator (it warns and runs every trial)
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=trials_at_once),
        ),
        run_config=tune.RunConfig(
            name=f"tune-{job.job_id}",
            storage_path=store.path("ray_tune"),  # TensorBoard / CSV / JSON per trial
            storage_filesystem=store.filesystem,
            verbose=0,
        ),
    )
    tic = time.perf_counter()
    grid = tuner.fit()
    trials = [
        TrialScore(
            r.metrics["trial_job_id"],
            {key: r.config[key] for key in spec.space},
            float(r.metrics[spec.metric]),
            int(r.metrics["models"]),
        )
        for r in grid
        if r.metrics and "trial_job_id" in r.metrics
    ]
    best = choose(trials, spec.eval_seeds, spec.mode)
    if best is None:
        errors = [str(r.error).strip().splitlines()[-1] for r in grid if r.error is not None]
        error = f"tune: no trial of {len(grid)} finished: {errors[:3]}"
        return {job.job_id: {"status": "failed", "error": error}}
    meta = publish_choice(store, job, best, len(grid), time.perf_counter() - tic)
    return {job.job_id: {"status": "ok", "meta": meta}}


def publish_choice(
    store: Store, job: DistillJob, best: TrialScore, n_trials: int, sweep_seconds: float
) -> dict[str, Any]:
    """The chosen trial's artifact becomes the tuned job's, its meta naming the choice."""
    src = local_artifact(store, best.trial_job_id)
    meta = json.loads((src / META_FILE).read_text())
    meta.update(
        {
            "job_id": job.job_id,
            "chosen_params_json": trial_job(job, best.config).params_json,
            "tune": {
                "config": best.config,
                "trial_job_id": best.trial_job_id,
                "val_top1": best.val_top1,
                "trials": n_trials,
                "sweep_seconds": sweep_seconds,
            },
        }
    )
    with store.staged_dir(artifact_rel(job.job_id), marker=META_FILE) as adir:
        shutil.copytree(src, adir)  # verified by `local_artifact`: the same bytes
        (adir / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        record_files(adir)  # digests of exactly what is published (the trial's, recomputed)
    return meta


def tune_trial(
    config: dict[str, Any],
    job: DistillJob,
    real_refs: list[Any],
    store: Store,
    suite: Any,
    max_failures: int,
    sha: str,
    force: bool,
    progress: Any = None,
) -> None:
    """One Tune trial: distil the trial job in a Train run (skipped when its artifact exists,
    unless `force`), then score it with the selection cells as Ray tasks, reporting the running
    mean val top1 after each model."""
    trial = trial_job(job, config)
    if force:
        store.delete(artifact_rel(trial.job_id))
    if not artifact_done(store, trial.job_id, print):  # damage is moved aside, in its log
        res = suite.resources.distill
        outcome = fit_distill([trial], real_refs[0], store, suite.name, res, max_failures, progress)
        result = outcome.get(trial.job_id, {"status": "failed", "error": "no outcome"})
        if result["status"] != "ok":
            last = str(result.get("error", "")).strip().splitlines()[-1:]
            raise RuntimeError(f"trial {trial.job_id} {config}: {' '.join(last)}")
    res = suite.resources.eval
    task = ray.remote(cell_task).options(
        num_cpus=res.cpus,
        num_gpus=res.gpus,
        max_retries=1,
        # outside the trial's placement group, which holds no CPU for them
        scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=None),
    )
    values: list[float] = []

    def report() -> None:
        mean = statistics.mean(values) if values else float("nan")
        tune.report({"val_top1": mean, "models": len(values), "trial_job_id": trial.job_id})

    todo: list[EvalCell] = []
    for cell in selection_cells(job, trial, config, suite.ipc):
        # scored before: replayed model by model, so
        if not force and cell_done(store, cell, print):
            values += [r["value"] for r in read_rows(store, cell.relpath)]
            report()  # a rerun's scheduler (ASHA) sees the reports of the first run
        else:
            todo.append(cell)
    at_once = cells_at_once(suite.resources.distill, res)
    pending: dict[Any, EvalCell] = {}
    while todo or pending:
        while todo and len(pending) < at_once:
            cell = todo.pop(0)
            pending[task.remote(cell, real_refs[0], store, res.device, res.cpus, sha)] = cell
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        cell = pending.pop(ref)
        status, _, _ = ray.get(ref)
        if status == "ok":  # a failed model is a failed row; the trial scores fewer models
            values += [r["value"] for r in read_rows(store, cell.relpath)]
        report()
