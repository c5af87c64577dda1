"""`--local`: a plan run in-process, without Ray (debugging, unit tests, notebooks).

Jobs run in plan order (prerequisites and class-subset jobs come first), each followed by its
cells, one at a time. Tuned jobs need Ray Tune and are refused.
"""

from __future__ import annotations

import socket
import traceback
from typing import Any

import torch

from ddbench.context import LocalContext, pick_device
from ddbench.errors import UserError
from ddbench.plan import Plan
from ddbench.runner.work import (
    Log,
    RunLog,
    RunSummary,
    artifact_done,
    as_run_log,
    cell_done,
    count,
    distill_job,
    error_line,
    fail_cells,
    git_sha,
    job_name,
    run_cell,
    write_reduce,
)
from ddbench.seeding import derive_seed
from ddbench.storage import Store


def run_local(
    plan: Plan,
    real: Any,
    store: Store,
    force: bool,
    log: Log | RunLog,
    cpus: float | None = None,
) -> RunSummary:
    """The same plan in-process: jobs then their cells, one at a time, `cpus` torch threads
    (default: torch's, i.e. OMP_NUM_THREADS when set, else the cores). `log` gets the lines (a
    `RunLog` also the problems and counts)."""
    tuned = sorted({j.label for j in plan.jobs if j.tune})
    if tuned:
        raise UserError(f"methods {tuned} have a tune: block, which runs on Ray: drop --local")
    out = as_run_log(log)
    summary = RunSummary(jobs_total=len(plan.jobs), cells_total=len(plan.cells))
    sha = git_sha()
    device = pick_device()
    threads = cpus or torch.get_num_threads()
    out.counts(summary)
    for job in plan.jobs:
        cells = plan.cells_of(job)
        if force or not artifact_done(store, job.job_id, log):
            out(f"distill {job_name(job)}")
            try:
                ctx = LocalContext(derive_seed(job.suite_seed, "distill", job.job_id), device, out)
                ctx.name = job_name(job)
                meta = distill_job(job, ctx, real, store, plan.suite, socket.gethostname())
                summary.distilled += 1
                summary.changed_jobs.add(job.job_id)
                out.counts(summary)
                seconds = meta["distill_seconds"]
                out(f"{summary.tally()} distilled {job_name(job)} in {seconds:.1f} s")
            except Exception:  # noqa: BLE001 - the job's cells become failed rows
                error = traceback.format_exc()
                summary.distill_failed += 1
                out.counts(summary)
                cause = error_line(error)
                out.problem(f"{summary.tally()} distillation failed for {job_name(job)}: {cause}")
                if cells:
                    fail_cells(cells, error, store, sha, summary, out)
                continue
        else:
            summary.distill_cached += 1
            out.counts(summary)
        missing = [j.job_id for j in plan.inputs_of(job) if not artifact_done(store, j.job_id, log)]
        if missing:
            error = f"class-subset jobs {missing} of these cells were not distilled"
            fail_cells(cells, error, store, sha, summary, out)
            continue
        for cell in cells:
            if not force and cell_done(store, cell, log):
                summary.cells_cached += 1
                out.counts(summary)
                continue
            status, n, cause = run_cell(
                cell, real, store, device, threads, sha, socket.gethostname()
            )
            count(summary, cell, status, n, out, cause)
    write_reduce(plan, store, sha, log)
    return summary
