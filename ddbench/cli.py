"""The `ddbench` command line (docs/architecture.md#command-line); with `ddbench.progress` (what a
run prints), the only module that prints.

Verbs: run, eval (a distillate from files, as a one-method suite), export (a run's distillates
as files), validate, ls, report, leaderboard. Exit codes: 0 all cells ok; 1 finished with failed
cells; 2 bad input (suite, data, address), reported without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from ddbench.errors import UserError
from ddbench.spec import SuiteError

if TYPE_CHECKING:
    from ddbench.progress import Verbosity
    from ddbench.registry import Plugin, Registry
    from ddbench.spec import LoadedSuite

EXIT_OK, EXIT_FAILED_CELLS, EXIT_BAD_INPUT = 0, 1, 2
LS_KINDS = ("methods", "evals", "archs", "datasets", "sections")  # sections: of the report


def _verbosity(args: argparse.Namespace) -> Verbosity:
    return "quiet" if args.quiet else "verbose" if args.verbose else "normal"


# --------------------------------------------------------------------------- verbs


def cmd_validate(args: argparse.Namespace) -> int:
    from ddbench.spec import load_suite

    worst = EXIT_OK
    for path in args.suites:
        try:
            loaded = load_suite(path, args.set)
            print(
                f"{path}: ok ({len(loaded.suite.methods)} methods, {len(loaded.suite.evals)} evals)"
            )
        except SuiteError as exc:
            print(str(exc), file=sys.stderr)
            worst = EXIT_BAD_INPUT
    return worst


def cmd_ls(args: argparse.Namespace) -> int:
    import fnmatch

    registry = _registry(args.kind)
    for name in registry.names():
        if args.pattern and not fnmatch.fnmatch(name, args.pattern):
            continue
        print(describe_plugin(registry.get(name)) if args.verbose else name)
    return EXIT_OK


def _registry(kind: str) -> Registry:
    if kind == "methods":
        from ddbench.methods import METHODS

        return METHODS
    if kind == "evals":
        from ddbench.evals import EVALS

        return EVALS
    if kind == "archs":
        from ddbench.archs import ARCHS

        return ARCHS
    if kind == "sections":
        from ddbench.report.sections import SECTIONS

        return SECTIONS
    from ddbench.data import DATASETS

    return DATASETS


def describe_plugin(plugin: type[Plugin]) -> str:
    """`ddbench ls -v`'s entry: name, version and paper where the kind has them, description,
    and each param with its default (or `(required)`)."""
    version = getattr(plugin, "version", None)
    lines = [f"{plugin.name}{f' (v{version})' if version else ''}: {plugin.description()}"]
    if getattr(plugin, "paper", None):
        lines.append(f"    paper: {plugin.paper}")
    params = getattr(plugin, "Params", None)
    for key, field in params.model_fields.items() if params else ():
        required = field.is_required()
        default = "(required)" if required else repr(field.get_default(call_default_factory=True))
        lines.append(f"    {key} = {default}")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    from ddbench.spec import load_suite

    return _execute(load_suite(args.suite, args.set), args, args.only, args.suite)


def cmd_eval(args: argparse.Namespace) -> int:
    """`ddbench eval`: a one-method suite (`from_files` with the given files) built in memory,
    then the same path as `ddbench run` (`_execute`)."""
    from ddbench.spec import build_suite

    if (args.images is None) == (args.image_folder is None):
        raise UserError("give --images FILE (with --labels) or --image-folder DIR")
    params = {
        key: value
        for key, value in {
            "images": args.images,
            "image_folder": args.image_folder,
            "labels": args.labels,
            "lr": args.lr,
            "value_space": args.value_space,
        }.items()
        if value is not None
    }
    evals = [name.strip() for name in args.evals.split(",") if name.strip()]
    raw = {
        "name": args.name or f"eval_{args.dataset}",
        "dataset": {"name": args.dataset},
        "ipc": [args.ipc],
        "methods": [{"name": "from_files", "label": args.label, "params": params}],
        "evals": [{"name": name} for name in evals],
        "profiles": {"smoke": {}},  # --set profile=smoke: each plugin's fast smoke params
    }
    loaded = build_suite(raw, "ddbench eval", args.set)
    entry = loaded.suite.methods[0]
    if entry.label is None:  # tells apart distillates evaluated into one suite (not in the job id)
        entry.label = f"from_files_{loaded.method_params[0].content_sha256[:8]}"
    return _execute(loaded, args, None, "ddbench eval")


def _execute(loaded: LoadedSuite, args: argparse.Namespace, only: str | None, source: str) -> int:
    """`run` and `eval`: the suite through `ddbench.execute` (the API's path too), printed by a
    `RunOutput` at the verbosity asked for; the run ends with its next commands."""
    from ddbench.execute import ExecOptions, execute
    from ddbench.progress import RunOutput, next_steps

    log = RunOutput(_verbosity(args))
    options = ExecOptions(
        out=args.out,
        local=args.local,
        address=args.address,
        force=args.force,
        dry_run=args.dry_run,
        tracking_uri=args.tracking_uri,
        dashboard=args.dashboard,
        verbose=args.verbose,
        only=only,
    )
    done = execute(loaded, options, source, log)
    for line in done.status:
        print(line)
    if done.summary is not None:
        results = done.store.location("results")
        log.next_steps(next_steps(done.suite, args.out, done.tracking_uri, results))
    return done.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from ddbench.execute import run_store
    from ddbench.report import write_report
    from ddbench.report.html import HTML_FILE

    formats = tuple(f.strip() for f in args.format.split(",") if f.strip())
    unknown = sorted(set(formats) - {"md", "csv", "html"})
    if unknown:
        raise UserError(f"--format: unknown or unsupported format(s) {unknown}; use md, csv, html")
    run = run_store(args.target, args.runs)
    out_dir = Path(args.out) / PurePosixPath(run.uri).name
    path = write_report(run, out_dir, formats)
    print(f"report written to {path}")
    if "html" in formats:
        print(f"HTML report written to {path.with_name(HTML_FILE)}")
    return EXIT_OK


def cmd_export(args: argparse.Namespace) -> int:
    from ddbench.execute import run_store
    from ddbench.export import export_run

    if not args.jobs and not args.all:
        raise UserError("name the jobs to export (job ids or method labels) or pass --all")
    if args.jobs and args.all:
        raise UserError("give job names or --all, not both")
    run = run_store(args.run, args.runs)
    ipcs = [int(i) for i in args.ipc.split(",")] if args.ipc else None
    for done in export_run(run, args.jobs, args.format, Path(args.out), ipcs, args.seed):
        clamped = ""
        if done.clamped_fraction is not None:
            clamped = (
                f"; clamped {100 * done.clamped_fraction:.3f}% of pixel values to [0, 1] "
                "(lossy: PNGs also round to 8 bits)"
            )
        print(f"{done.label} ipc={done.ipc} [{done.job_id}] -> {done.directory}{clamped}")
    return EXIT_OK


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """`ddbench leaderboard`: MLflow finds the runs' stores, the report's Polars code
    (`ddbench.report.accuracy.leaderboard_table`) aggregates their rows, one line per protocol
    config."""
    from ddbench.protocols import PROTOCOL_PARAMS
    from ddbench.report.accuracy import leaderboard_table
    from ddbench.tracking import default_tracking_uri, leaderboard_rows

    fmt = args.format
    if fmt not in ("md", "csv", "json"):
        raise UserError(f"--format {fmt!r}: use md, csv or json")
    where = {}
    for item in args.where:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--where {item!r}: use KEY=VALUE (e.g. labels=teacher)")
        where[key] = value
    uri = args.tracking_uri or default_tracking_uri(args.runs)
    rows = leaderboard_rows(
        uri, args.runs, args.suite, args.dataset, lambda line: print(line, file=sys.stderr)
    )
    if rows.is_empty():
        raise UserError(f"no job runs with result rows in MLflow at {uri}")
    table = leaderboard_table(rows, args.metric, protocol=args.protocol, where=where)
    if table.is_empty():
        raise UserError(f"no {args.metric!r} rows match the filters")
    if fmt == "csv":
        print(table.drop("eval_params").write_csv(), end="")
    elif fmt == "json":
        print(table.write_json())
    else:
        header = ["dataset", "ipc", "method", "arch", "protocol", *PROTOCOL_PARAMS]
        header += [f"{args.metric} % (n)", "artifact bytes", "distill s", "total s", "suites"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in table.iter_rows(named=True):
            cells = [str(r[k]) for k in ("dataset", "ipc", "method", "arch", "protocol")]
            cells += [str(r[k]) if r[k] is not None else "–" for k in PROTOCOL_PARAMS]
            cells += [
                f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f} ({r['n']})",
                f"{r['artifact_bytes']:,}",
                f"{r['distill_seconds']:.1f}",
                f"{r['total_seconds']:.1f}",
                r["suites"],
            ]
            print("| " + " | ".join(cells) + " |")
    return EXIT_OK


# --------------------------------------------------------------------------- parser


def _include_arg(p: argparse.ArgumentParser) -> None:
    """`--include`, on the verbs that look plugins up (imported in `main`, before the verb)."""
    p.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="PATH",
        help="a plugin .py file or a folder of them, imported first (repeatable)",
    )


def _execution_args(p: argparse.ArgumentParser) -> None:
    """The options of commands that run a suite (`run`, `eval`)."""
    _include_arg(p)
    p.add_argument("--address", help="join a Ray cluster (auto, host:6379, ray://host:10001)")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite value by dotted path; profile=NAME applies a profile",
    )
    p.add_argument(
        "--out", default="runs", help="output root: a path or a URI (s3://, gs://, file://)"
    )
    p.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<out>/mlflow.db)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and what is done")
    p.add_argument("--local", action="store_true", help="run in-process without Ray")
    p.add_argument("--force", action="store_true", help="recompute even what is done")
    p.add_argument(
        "--dashboard",
        action="store_true",
        help="start the Ray dashboard with the embedded Ray (127.0.0.1; needs ray[default])",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument(
        "-q", "--quiet", action="store_true", help="print only problems and the final summary"
    )
    shown.add_argument(
        "-v", "--verbose", action="store_true", help="also print Ray's and MLflow's own logs"
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ddbench", description="Benchmark dataset distillation.")
    sub = p.add_subparsers(dest="verb", required=True)

    run = sub.add_parser("run", help="distil and evaluate a suite")
    run.add_argument("suite")
    _execution_args(run)
    run.add_argument("--only", help="glob over method names / labels")
    run.set_defaults(func=cmd_run)

    ev = sub.add_parser(
        "eval", help="evaluate a distillate made elsewhere (files) like a suite's method"
    )
    ev.add_argument("--images", help=".pt tensor N x C x H x W (or a .safetensors export)")
    ev.add_argument("--image-folder", help="folder DIR/<class name>/*.png|jpg")
    ev.add_argument("--labels", help=".pt: hard [N] int or soft [N, K] probabilities")
    ev.add_argument("--lr", help=".pt scalar: a learned learning rate (MTT / DATM)")
    ev.add_argument(
        "--value-space",
        choices=("normalised", "pixels"),
        help="space of --images (default normalised; an image folder is pixels)",
    )
    ev.add_argument("--dataset", required=True, help="registered dataset the images belong to")
    ev.add_argument("--ipc", type=int, required=True, help="images per class of the distillate")
    ev.add_argument(
        "--evals", default="cross_arch", help="comma list of evaluators (default cross_arch)"
    )
    ev.add_argument("--name", help="suite name: runs/<name> (default eval_<dataset>)")
    ev.add_argument("--label", help="method label in rows and reports (default from_files_<hash>)")
    _execution_args(ev)
    ev.set_defaults(func=cmd_eval)

    ex = sub.add_parser("export", help="write a run's distillates as .pt, safetensors or PNGs")
    ex.add_argument("run", help="suite name (under --runs), or a run directory or URI")
    ex.add_argument("jobs", nargs="*", help="job ids or method labels (or --all)")
    ex.add_argument("--all", action="store_true", help="every job that has result rows")
    ex.add_argument("--format", choices=("pt", "safetensors", "imagefolder"), default="pt")
    ex.add_argument("--out", required=True, help="folder to write one sub-folder per export into")
    ex.add_argument("--runs", default="runs", help="output root the suite ran into (path or URI)")
    ex.add_argument(
        "--ipc",
        help="comma list: IPCs a generator is drawn at (default: the IPCs it was evaluated at)",
    )
    ex.add_argument(
        "--seed",
        type=int,
        default=0,  # eval seed 0: the draw cross_arch's first model trains on (fixed sampling)
        help="a generator's draw: the one cross_arch's eval seed SEED trains on (default 0)",
    )
    _include_arg(ex)
    ex.set_defaults(func=cmd_export)

    val = sub.add_parser("validate", help="check suites; every located error at once")
    val.add_argument("suites", nargs="+")
    val.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    _include_arg(val)
    val.set_defaults(func=cmd_validate)

    ls = sub.add_parser("ls", help="list registered plugins")
    ls.add_argument("kind", choices=LS_KINDS)
    ls.add_argument("pattern", nargs="?")
    ls.add_argument("-v", "--verbose", action="store_true")
    _include_arg(ls)
    ls.set_defaults(func=cmd_ls)

    rep = sub.add_parser("report", help="write a report from a suite's results")
    rep.add_argument("target", help="suite name (under --runs), or a run directory or URI")
    rep.add_argument("--runs", default="runs", help="output root the suite ran into (path or URI)")
    rep.add_argument("--out", default="reports", help="report root (default reports/)")
    rep.add_argument(
        "--format",
        default="md",
        help="comma list of md, csv, html (README.md is always written; html: report.html)",
    )
    _include_arg(rep)  # a plugin file may register report sections (ddbench.report.sections)
    rep.set_defaults(func=cmd_report)

    lb = sub.add_parser(
        "leaderboard", help="mean ± std (n) per method and protocol over the runs MLflow knows"
    )
    lb.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<runs>/mlflow.db)")
    lb.add_argument("--runs", default="runs", help="output root holding the default store")
    lb.add_argument("--suite", help="only this suite (MLflow experiment)")
    lb.add_argument("--dataset", help="only this dataset")
    lb.add_argument("--metric", default="top1")
    lb.add_argument("--protocol", help="only these protocols: a name or glob (shared, paper:*)")
    lb.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only rows whose column or eval param KEY is VALUE (labels=teacher, augment=false)",
    )
    lb.add_argument("--format", default="md", help="md, csv or json")
    lb.set_defaults(func=cmd_leaderboard)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "include", None):
            from ddbench.plugins import include_plugins

            include_plugins(args.include)
        return args.func(args)
    except SuiteError as exc:  # already "file:line: path: message" lines
        print(str(exc), file=sys.stderr)
        return EXIT_BAD_INPUT
    except UserError as exc:
        print(f"ddbench: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
