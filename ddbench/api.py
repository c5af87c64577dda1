"""The Python API: what the CLI does, callable from a notebook or a script.

`ddbench/__init__.py` re-exports these names lazily, so `import ddbench` stays light::

    import ddbench

    suite = ddbench.load_suite("suites/quickstart.yaml", profile="smoke")
    run = ddbench.run(suite, local=True)
    rows = ddbench.rows(run)                       # a Polars DataFrame of result rows
    ddbench.report(run, out="reports")             # reports/quickstart/README.md
    herding = ddbench.load_distillate(run, "herding", ipc=1)   # a torch Dataset

Every function goes through the modules the CLI uses: `load_suite` through `ddbench.spec`,
`run` through `ddbench.execute` (the code of `ddbench run` and `ddbench eval`), `rows` and
`report` through `ddbench.report`, `load_distillate` through `ddbench.export`. Errors are the
CLI's (`SuiteError`, `UserError`, `PluginError`), raised instead of printed. A new function
here is a thin adapter over such a module, with a docstring example, and is added to
`ddbench.__all__`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ddbench.execute import ExecOptions, RunResult, execute, run_store

if TYPE_CHECKING:
    from typing import TypeAlias

    import polars as pl

    from ddbench.export import Distillate
    from ddbench.spec import LoadedSuite
    from ddbench.storage import Store

    # a run: what `run` returned, its Store, a run directory or URI, or a suite name
    Run: TypeAlias = RunResult | Store | str | Path

LOGGER = logging.getLogger("ddbench")


def _overrides(set_: Sequence[str] | Mapping[str, Any], profile: str | None) -> list[str]:
    """`--set` pairs from "KEY=VALUE" strings or a {dotted key: value} mapping (values written
    as YAML flow text, which `ddbench.spec` parses back), then `profile=NAME`."""
    import yaml

    if isinstance(set_, Mapping):
        pairs = [
            f"{key}={yaml.safe_dump(value, default_flow_style=True, width=10**9).strip()}"
            for key, value in set_.items()
        ]
        pairs = [p.removesuffix("\n...") for p in pairs]  # YAML's end-of-document for scalars
    else:
        pairs = [set_] if isinstance(set_, str) else list(set_)
    return pairs + ([f"profile={profile}"] if profile else [])


def load_suite(
    source: str | Path | Mapping[str, Any],
    set: Sequence[str] | Mapping[str, Any] = (),  # the CLI's --set overrides; () = none
    profile: str | None = None,  # a profile of the suite (`smoke`); None = the suite as written
    include: Sequence[str | Path] = (),  # plugin .py files / folders to import first; () = none
) -> LoadedSuite:
    """Read (a YAML file) or take (a dict) a suite, apply `profile` and `set` overrides and
    validate it, as `ddbench validate` / `ddbench run` do; raises `SuiteError` listing every
    problem. `set` takes `["KEY=VALUE", ...]` like `--set`, or `{"dotted.key": value}`.

    Example::

        suite = ddbench.load_suite(
            "suites/quickstart.yaml", profile="smoke", set={"evals.cross_arch.params.epochs": 5}
        )
        suite = ddbench.load_suite({"name": "mine", "ipc": [1], "methods": [{"name": "dm"}],
                                    "evals": [{"name": "cross_arch"}]})
    """
    from ddbench.plugins import include_plugins
    from ddbench.spec import build_suite
    from ddbench.spec import load_suite as read_suite

    include_plugins(include)
    overrides = _overrides(set, profile)
    if isinstance(source, Mapping):
        return build_suite(dict(source), "<dict>", overrides)
    return read_suite(source, overrides)


def run(
    suite: LoadedSuite | str | Path | Mapping[str, Any],
    *,
    local: bool = False,  # True: in-process without Ray (the CLI's --local)
    address: str | None = None,  # Ray cluster to join; None: an embedded Ray on 127.0.0.1
    store: str | Path = "runs",  # output root (the CLI's --out), a path or URI: <store>/<suite>
    only: str | Sequence[str] | None = None,  # globs over method names / labels; None: all
    force: bool = False,  # True: recompute finished jobs and cells too
    dry_run: bool = False,  # True: only list each job and what of it is done (`.status`)
    tracking_uri: str | None = None,  # MLflow; None: $MLFLOW_TRACKING_URI, else <store>/mlflow.db
    include: Sequence[str | Path] = (),  # plugin .py files / folders (shipped to Ray workers)
    log: Callable[[str], None] | None = None,  # progress lines; None: the `ddbench` logger (INFO)
) -> RunResult:
    """Run a suite (a `load_suite` result, or what `load_suite` takes) exactly as `ddbench run`
    does: the same plan, cache, rows and MLflow logging. Returns a `RunResult`: `.store` (the
    run, for `rows` / `report` / `load_distillate`), `.dir`, `.summary`, `.exit_code`.

    Example::

        run = ddbench.run(suite, local=True, store="runs", log=print)
        run.summary.cells_failed   # 0
    """
    from ddbench.plugins import include_plugins

    include_plugins(include)
    loaded = suite if not isinstance(suite, str | Path | Mapping) else load_suite(suite)
    options = ExecOptions(
        out=str(store),
        local=local,
        address=address,
        force=force,
        dry_run=dry_run,
        tracking_uri=tracking_uri,
        only=only if only is None or isinstance(only, str) else list(only),
    )
    return execute(loaded, options, loaded.path, log or LOGGER.info)


def _store(run: Run, runs: str | Path) -> Store:
    from ddbench.storage import Store

    if isinstance(run, RunResult):
        return run.store
    if isinstance(run, Store):
        return run
    return run_store(run, runs)


def rows(run: Run, runs: str | Path = "runs") -> pl.DataFrame:
    """Every result row of a run as a Polars DataFrame (columns: docs/results.md). `run` is a
    `RunResult`, a `Store`, a run directory or URI, or a suite name under `runs` (the output
    root).

    Example::

        top1 = ddbench.rows(run).filter(pl.col("metric") == "top1", pl.col("split") == "test")
    """
    from ddbench.report.rows import load_rows

    return load_rows(_store(run, runs))[0]  # the unreadable files' names are the report's


def report(
    run: Run,
    out: str | Path = "reports",  # report root: the report goes to <out>/<suite>/
    formats: Sequence[str] = ("md",),  # md (README.md, always), csv (summary.csv), html
    runs: str | Path = "runs",  # output root a suite name is looked up under
) -> Path:
    """Write a run's report as `ddbench report` does; returns the path of its README.md.

    Example::

        ddbench.report(run, out="reports", formats=("md", "html"))  # reports/<suite>/report.html
    """
    from ddbench.errors import UserError
    from ddbench.report import write_report

    unknown = sorted(set(formats) - {"md", "csv", "html"})
    if unknown:
        raise UserError(f"formats: unknown {unknown}; use md, csv, html")
    store = _store(run, runs)
    return write_report(store, Path(out) / PurePosixPath(store.uri).name, tuple(formats))


def load_distillate(
    run: Run,
    job: str,
    ipc: int | None = None,  # images per class; None: the job's own (or its one evaluated IPC)
    seed: int = 0,  # a generator's draw: the one cross_arch's eval seed `seed` trains on
    runs: str | Path = "runs",  # output root a suite name is looked up under
    include: Sequence[str | Path] = (),  # plugin files, e.g. a plugin dataset to draw from
) -> Distillate:
    """One distillate of a run as a torch `Dataset` of (image, label), named by job id or
    method label: the stored images, or a generator's draw with a recorded seed, exactly what
    `ddbench export` writes (`ddbench.export.Distillate`: also `.meta`, `.learned_lr`).

    Example::

        data = ddbench.load_distillate(run, "dm", ipc=10)
        loader = torch.utils.data.DataLoader(data, batch_size=256, shuffle=True)
    """
    from ddbench.export import load_distillate as load
    from ddbench.plugins import include_plugins

    include_plugins(include)
    return load(_store(run, runs), job, ipc, seed)
