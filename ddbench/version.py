"""The installed ddbench version, read from the package metadata (`pyproject.toml` states it once);
stamped on every result row, MLflow run and export."""

from importlib.metadata import version

__version__ = version("ddbench")
