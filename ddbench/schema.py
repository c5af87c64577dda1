"""The result table: one tidy row per measured number, a fixed Arrow schema (docs/results.md).

`Row` is a plain dict with exactly the columns of `RESULT_SCHEMA`; `write_rows` writes one Parquet
file atomically into a run's `Store` (a local directory or a URI, `ddbench.storage`). Read a local
run back with `polars.scan_parquet("runs/<suite>/results/**/*.parquet")`, any run with
`read_results(store)`; readers that must not stop at a damaged file (reports, export, MLflow)
use `read_readable`, which skips unreadable Parquet files and names them. A column is added here
and nowhere else.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    from ddbench.storage import Store

RESULT_SCHEMA = pa.schema(
    [
        ("suite", pa.string()),
        ("job_id", pa.string()),
        ("method", pa.string()),
        ("method_label", pa.string()),
        ("method_version", pa.int16()),
        ("method_params", pa.string()),
        ("dataset", pa.string()),
        ("ipc", pa.int32()),
        ("distill_seed", pa.int32()),
        ("artifact_bytes", pa.int64()),
        ("distill_seconds", pa.float64()),
        # seconds of the job's prerequisite jobs (d2m's cgan, d4m's diffusion model), from their
        # artifacts' meta; 0 without any; null on rows written before the column existed
        ("prerequisite_seconds", pa.float64()),
        ("evaluator", pa.string()),
        ("eval_version", pa.int16()),
        ("eval_params", pa.string()),
        # the evaluation protocol: `shared` or `paper:<method>` (ddbench.protocols)
        ("protocol", pa.string()),
        ("eval_config", pa.string()),  # hash of evaluator, version and eval_params (protocols)
        ("arch", pa.string()),
        ("eval_seed", pa.int32()),
        ("step", pa.int32()),
        ("split", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("higher_is_better", pa.bool_()),
        ("status", pa.string()),
        ("error", pa.string()),
        ("wall_time_s", pa.float64()),
        ("ddbench_version", pa.string()),
        ("git_sha", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("node", pa.string()),  # where the cell ran (Ray node id / host); docs/results.md#columns
    ]
)
COLUMNS = tuple(RESULT_SCHEMA.names)
# a row's (and an eval job's) `ipc` when the model trained on the whole train split: the
# `whole_dataset` reference. A distill job serving every IPC has `ipc` None instead (`plan`).
WHOLE_SPLIT_IPC = 0
# columns that may be null (`make_row` requires the others). Rows read back from files written
# before `protocol`, `eval_config` and `prerequisite_seconds` existed hold nulls there;
# `prerequisite_seconds` is also null when the distillation failed.
NULLABLE = {"arch", "eval_seed", "step", "error", "node", "prerequisite_seconds"}


def to_json(params: dict[str, Any]) -> str:
    """Canonical JSON for params columns (sorted keys, so equal params give equal strings)."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


def now_utc() -> datetime:
    return datetime.now(UTC)


def make_row(**values: Any) -> dict[str, Any]:
    """A result row; every column must be given (nullable ones may be None)."""
    missing = [c for c in COLUMNS if c not in values and c not in NULLABLE]
    extra = [k for k in values if k not in COLUMNS]
    if missing or extra:
        raise ValueError(f"bad result row: missing {missing}, unknown {extra}")
    row = {c: values.get(c) for c in COLUMNS}
    if row["status"] == "ok" and (row["value"] is None or math.isnan(row["value"])):
        raise ValueError(f"an ok row needs a finite value: {row['metric']}")
    return row


def rows_to_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=RESULT_SCHEMA)


def write_rows(store: Store, rel: str, rows: list[dict[str, Any]]) -> None:
    """Write rows to one Parquet file of `store` atomically (readers never see a partial file)."""
    store.write_table(rel, rows_to_table(rows))


def read_rows(store: Store, rel: str) -> list[dict[str, Any]]:
    return store.read_table([rel], RESULT_SCHEMA).to_pylist()


def result_files(store: Store) -> list[str]:
    """Every result file of a run (cells and reduce rows), relative to the store."""
    return store.list_files("results", suffix=".parquet")


def read_readable(store: Store, rels: list[str]) -> tuple[pa.Table, list[str]]:
    """The rows of the readable files among `rels`, and the unreadable ones (corrupt or
    truncated Parquet): for readers that list damage instead of stopping at it."""
    tables, unreadable = [], []
    for rel in rels:
        try:
            tables.append(store.read_table([rel], RESULT_SCHEMA))
        except (pa.ArrowException, OSError):
            unreadable.append(rel)
    table = pa.concat_tables(tables) if tables else RESULT_SCHEMA.empty_table()
    return table, unreadable


def read_results(store: Store) -> pa.Table:
    """All rows of a run as one Arrow table (`polars.from_arrow` for a DataFrame)."""
    return store.read_table(result_files(store), RESULT_SCHEMA)
