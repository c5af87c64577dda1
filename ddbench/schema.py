"""The result table: one tidy row per measured number, a fixed Arrow schema (DESIGN.md §3).

`Row` is a plain dict with exactly the columns of `RESULT_SCHEMA`; `write_rows` writes one Parquet
file atomically (temporary file + rename). Read everything back with
`polars.scan_parquet("runs/<suite>/results/**/*.parquet")`. A column is added here and nowhere else.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

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
        ("evaluator", pa.string()),
        ("eval_version", pa.int16()),
        ("eval_params", pa.string()),
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
        ("node", pa.string()),  # where the cell ran (Ray node id / host); added to DESIGN §3
    ]
)
COLUMNS = tuple(RESULT_SCHEMA.names)
NULLABLE = {"arch", "eval_seed", "step", "error", "node"}


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


def write_rows(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Write rows to one Parquet file atomically (readers never see a partial file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".parquet", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(rows_to_table(rows), tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    return pq.read_table(path, schema=RESULT_SCHEMA).to_pylist()
