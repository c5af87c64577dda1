"""Ray itself: start or join a cluster, and check what it can hold.

- `init_ray` / `shutdown_ray`: join a cluster (`--address`) or start a private embedded one on
  127.0.0.1, with the environment Ray Train needs (`RAY_ENV`) and the `--include` plugin files
  (`plugin_runtime_env`), and leave it. Ray's own output stays out of the run's log unless
  `verbose` (`--verbose`): workers' output is not forwarded to the driver (their progress comes
  through `ddbench.runner.train.ProgressInbox`) and the driver's `ray` loggers show errors only;
- `alive_nodes`: node id -> total resources, what the scheduler packs units onto;
- `check_resources`: stop before any work when no node could ever hold what the suite asks for;
- `cell_task`: one eval cell as a Ray task, its rows naming the node (`node_name`).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ddbench.errors import UserError
from ddbench.plan import EvalCell
from ddbench.plugins import PLUGIN_MODULES_ENV, included_paths, plugin_files
from ddbench.runner.resources import unplaceable
from ddbench.runner.work import Log, run_cell
from ddbench.storage import Store

if TYPE_CHECKING:
    from ddbench.spec import LoadedSuite

# Ray Train V2 blocks ~2 s per report at its default health-check interval (measured; see
# docs/architecture.md). A Train run waits for its workers' CPUs while others hold them: at the
# default 60 s a waiting controller gives up, logs WorkerGroupStartupTimeoutError and starts
# over (the scheduler admits a run only when its bundles are free, so this is a backstop).
# The rest keeps Ray's machinery out of the log and out of each Train run's start-up:
# - Train's print patch sends a worker's print both to stdout and to its logger (each line
#   twice in the driver's log);
# - the preemption watcher (one more actor per Train run, polling every 5 s) logs an error-level
#   line about its own constructor on start; it tells workers that their node is being drained
#   (a reclaimed spot instance) so they can checkpoint first, while ddbench jobs checkpoint on
#   their own schedule (`checkpoint_every`) and a lost worker resumes from the last checkpoint
#   (`FailureConfig`);
# - Train's metrics callbacks export Prometheus metrics that nothing here scrapes.
RAY_ENV = {
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S": "1800",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_METRICS_ENABLED": "0",
}


def _log_env(verbose: bool) -> dict[str, str]:
    """Ray's settings of the driver's log of worker output (only forwarded when `verbose`):
    off a terminal, no colour codes, and no deduplication, whose `[repeated Nx]` marks are
    coloured whatever the setting. Read by Ray at import: set before ray is imported."""
    if not verbose or sys.stdout.isatty():
        return {}
    return {"RAY_COLOR_PREFIX": "0", "RAY_DEDUP_LOGS": "0"}


def plugin_runtime_env(include: Sequence[str | Path]) -> dict[str, Any]:
    """The runtime-environment keys that bring `--include` plugin files to every Ray worker:
    each file (helpers too) as a single-file `py_modules` entry, which Ray uploads once and puts
    on the workers' import path, and the plugin modules' names in `PLUGIN_MODULES_ENV`, which
    each registry imports on its first lookup (`ddbench.plugins`)."""
    plugins, shipped = plugin_files(include)
    if not plugins:
        return {}
    return {
        "py_modules": [str(file) for file in shipped],
        "env_vars": {PLUGIN_MODULES_ENV: ",".join(file.stem for file in plugins)},
    }


def init_ray(
    address: str | None,
    num_cpus: int | None = None,
    dashboard: bool = False,
    verbose: bool = False,
) -> str | None:
    """Join a cluster at `address`, or start a private embedded one on 127.0.0.1; returns the
    Ray dashboard's URL when `dashboard` asks the embedded cluster for one (a cluster's own
    dashboard is the cluster's business). `verbose` forwards Ray's workers' output (Train
    controllers, Tune, the placement-group cleaner's polling) and the driver's Ray warnings to
    the console; otherwise only ddbench's own lines are shown (Ray's session logs keep the rest).
    The plugin files this process imported with `--include` reach every worker through the
    job's runtime environment (`plugin_runtime_env`); entry-point plugins are installed
    packages, needed on every node.

    The environment is set before ray is imported: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER
    once, at import. The embedded cluster sets it to 0 (single-node mode), without which Ray
    turns 127.0.0.1 into the machine's network address; a driver joining a cluster leaves it
    alone, so it resolves its address as the cluster's nodes do.
    """
    for key, value in {**RAY_ENV, **_log_env(verbose)}.items():
        os.environ.setdefault(key, value)
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    plugins = plugin_runtime_env(included_paths())
    runtime_env: dict[str, Any] = {
        **plugins,
        "env_vars": {**RAY_ENV, **plugins.get("env_vars", {})},
    }
    shown = {"logging_level": "WARNING" if verbose else "ERROR", "log_to_driver": verbose}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, **shown)
        else:
            context = ray.init(
                address="local",
                num_cpus=num_cpus or os.cpu_count(),
                _node_ip_address="127.0.0.1",
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",  # loopback only, like every process of the run
                runtime_env=runtime_env,
                **shown,
            )
            if dashboard:
                return f"http://{context.dashboard_url}"
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot start or join Ray at {address or 'local'}: {exc}") from None
    return None


def shutdown_ray() -> None:
    """Leave the cluster (an embedded one stops with its driver)."""
    import ray

    ray.shutdown()


def alive_nodes() -> dict[str, dict[str, float]]:
    """Node id -> total resources, of each live node of the Ray cluster."""
    import ray

    return {node["NodeID"]: node["Resources"] for node in ray.nodes() if node.get("Alive")}


def check_resources(loaded: LoadedSuite, embedded: bool, log: Log) -> None:
    """Stop before any work when Ray can never place what the suite asks for (`unplaceable`).
    Nothing joins the embedded Ray, so there it is a `UserError` naming the suite's field; a
    cluster's autoscaler may still add such a node, so there it is a warning."""
    problems = [
        f"{loaded.where(loc)}: {'.'.join(loc)}: {message}"
        for loc, message in unplaceable(loaded.suite.resources, list(alive_nodes().values()))
    ]
    if not problems:
        return
    if embedded:
        problems.append("lower them, or run on a cluster that has such nodes with --address")
        raise UserError("\n".join(problems))
    for problem in problems:
        log(f"warning: {problem}; the run waits until the cluster has such a node")


def node_name() -> str:
    """The `node` of rows and artifacts made in this Ray process: `ray:` + its node id."""
    import ray

    return "ray:" + ray.get_runtime_context().get_node_id()[:12]


def cell_task(
    cell: EvalCell, real: Any, store: Store, device: str, cpus: float, sha: str
) -> tuple[str, int, str | None]:
    """One eval cell as a Ray task (`run_cell`, its rows naming this node)."""
    return run_cell(cell, real, store, device, cpus, sha, node_name())
