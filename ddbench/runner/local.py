"""`--local`: a plan run in-process, without Ray (debugging, unit tests, notebooks).

Jobs run in plan order (prerequisites and class-subset jobs come first), each followed by its
cells, one at a time. Tuned jobs need Ray Tune and are refused.
"""

from __future__ import annotations

import os
import socket
import traceback
from typing import Any

from ddbench.context import LocalContext, pick_device
from ddbench.errors import UserError
from ddbench.plan import Plan
from ddbench.runner.work import (
    Log,
    RunSummary,
    artifact_done,
    cell_done,
    count,
    distill_job,
    fail_cells,
    git_sha,
    run_cell,
    write_reduce,
)
from ddbench.seeding import derive_seed
from ddbench.storage import Store


def run_local(
    plan: Plan, real: Any, store: Store, force: bool, log: Log, cpus: float | None = None
) -> RunSummary:
    """The same plan in-process: jobs then their cells, one at a time, `cpus` torch threads
    (default: every core)."""
    tuned = sorted({j.label for j in plan.jobs if j.tune})
    if tuned:
        raise UserError(f"methods {tuned} have a tune: block, which runs on Ray: drop --local")
    summary = RunSummary()
    sha = git_sha()
    device = pick_device()
    for job in plan.jobs:
        cells = plan.cells_of(job)
        if force or not artifact_done(store, job.job_id, log):
            log(f"distill {job.label} ipc={job.ipc} seed={job.distill_seed} [{job.job_id}]")
            try:
                ctx = LocalContext(derive_seed(job.suite_seed, "distill", job.job_id), device, log)
                distill_job(job, ctx, real, store, plan.suite, socket.gethostname())
                summary.distilled += 1
                summary.changed_jobs.add(job.job_id)
            except Exception:  # noqa: BLE001 - the job's cells become failed rows
                fail_cells(cells, traceback.format_exc(), store, sha, summary, log)
                continue
        else:
            summary.distill_cached += 1
        missing = [j.job_id for j in plan.inputs_of(job) if not artifact_done(store, j.job_id, log)]
        if missing:
            error = f"class-subset jobs {missing} of these cells were not distilled"
            fail_cells(cells, error, store, sha, summary, log)
            continue
        for cell in cells:
            if not force and cell_done(store, cell, log):
                summary.cells_cached += 1
                continue
            status, n, note = run_cell(
                cell, real, store, device, cpus or os.cpu_count() or 1, sha, socket.gethostname()
            )
            count(summary, cell, status, n, log, note)
    write_reduce(plan, store, sha, log)
    return summary
