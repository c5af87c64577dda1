"""Where a run's outputs live: a local directory or a URI, read and written through `pyarrow.fs`.

`Store(root)` is the output root of one suite (`<out>/<suite>`). `root` is either a plain path
(the local disk, used directly) or a URI that `pyarrow.fs.FileSystem.from_uri` understands:
`s3://bucket/runs`, `gs://bucket/runs`, `hdfs://...`, or `file:///abs/path`. Every path below
the root is a relative POSIX string (`artifacts/<job_id>/meta.json`, `results/...`).

Nothing assumes a shared disk: on a URI store, artifacts and result files move between nodes
through the filesystem API only. A node that needs an artifact copies it once into a node-local
cache (`local_copy`); artifacts are immutable (content-hash job ids), so a complete cached copy
never goes stale. A `file://` URI takes exactly this path (not the local shortcut), which is how
the tests exercise the object-store code on one machine.

Atomicity. On a local disk a file is written to a `.tmp-*` sibling and renamed; object stores
make a single upload visible all at once, so a file is written in one stream. A directory
(`staged_dir`) is built locally and published with its `marker` file last, so a reader that
sees the marker sees the whole directory. Listings skip `.tmp-*` names.

Damage. A file or directory found corrupt is never deleted: `move_aside` renames it to
`<name>.corrupt-<n>` (kept for inspection), which listings skip, so the run redoes that work.

A `Store` pickles as its root string and rebuilds its filesystem on first use, so it travels
to Ray tasks and Train workers as a plain argument.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ddbench.errors import UserError
from ddbench.seeding import content_hash

TMP_PREFIX = ".tmp-"
# `<name>.corrupt-<n>`: a damaged file or directory moved aside (`Store.move_aside`)
CORRUPT_MARK = ".corrupt-"
HASH_CHUNK = 1 << 20  # bytes read at a time while hashing (bounds memory on large files)
# node-local copies of artifacts from URI stores; DDBENCH_CACHE moves it (e.g. to a local SSD)
CACHE_ENV = "DDBENCH_CACHE"


def is_uri(root: str | Path) -> bool:
    return "://" in str(root)


def stream_sha256(stream: BinaryIO | pa.NativeFile) -> str:
    """The hex sha256 of everything left in `stream`, read in `HASH_CHUNK` pieces."""
    digest = hashlib.sha256()
    while chunk := stream.read(HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp_path)` into a `.tmp-*` sibling of local `path`, then rename it into place, so
    readers never see a partial file (stores, teachers and NAS reference caches use this)."""
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Store:
    """The output root of one suite; see the module docstring."""

    def __init__(self, root: str | Path) -> None:
        text = str(root)
        self.uri = text.rstrip("/") if is_uri(text) else str(Path(text).resolve())
        self._fs: pafs.FileSystem | None = None
        self._base = ""

    def __reduce__(self) -> tuple[Any, ...]:
        return (Store, (self.uri,))

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def __str__(self) -> str:
        return self.uri

    # ---------------------------------------------------------------- the filesystem

    @property
    def local_root(self) -> Path | None:
        """The directory of a plain-path store (used directly); None for a URI store."""
        return None if is_uri(self.uri) else Path(self.uri)

    def _filesystem(self) -> tuple[pafs.FileSystem, str]:
        if self._fs is None:
            if self.local_root is not None:
                self._fs, self._base = pafs.LocalFileSystem(), self.uri
            else:
                try:
                    self._fs, self._base = pafs.FileSystem.from_uri(self.uri)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
                    raise UserError(f"--out {self.uri}: not a usable storage URI ({exc})") from None
        return self._fs, self._base

    @property
    def filesystem(self) -> pafs.FileSystem:
        return self._filesystem()[0]

    def path(self, rel: str = "") -> str:
        """The filesystem path of `rel` (for APIs that take a filesystem + path, e.g. Ray)."""
        base = self._filesystem()[1]
        return str(PurePosixPath(base) / rel) if rel else base

    def child(self, name: str) -> Store:
        return Store(f"{self.uri}/{name}")

    def location(self, rel: str = "") -> str:
        """A human-readable place for messages: the path or the URI of `rel`."""
        return f"{self.uri}/{rel}" if rel else self.uri

    # ---------------------------------------------------------------- files

    def exists(self, rel: str) -> bool:
        return self.filesystem.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def read_bytes(self, rel: str) -> bytes:
        with self.filesystem.open_input_stream(self.path(rel)) as stream:
            return stream.read()

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write one file atomically (see the module docstring)."""
        fs, target = self.filesystem, self.path(rel)
        parent = str(PurePosixPath(target).parent)
        fs.create_dir(parent, recursive=True)
        if isinstance(fs, pafs.LocalFileSystem):  # a plain path or file://: a local path
            atomic_write(Path(target), lambda path: path.write_bytes(data))
            return
        with fs.open_output_stream(target) as stream:  # one upload: visible when complete
            stream.write(data)

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def delete(self, rel: str) -> None:
        """Remove a file or a directory tree; missing is fine."""
        fs, target = self.filesystem, self.path(rel)
        kind = fs.get_file_info(target).type
        if kind == pafs.FileType.Directory:
            fs.delete_dir(target)
        elif kind == pafs.FileType.File:
            fs.delete_file(target)

    def _file_infos(self, rel: str) -> Iterator[tuple[str, pafs.FileInfo]]:
        """(path relative to the store, info) of the files under `rel`, recursive, skipping
        temp files and moved-aside damage."""
        base = self.path()
        selector = pafs.FileSelector(self.path(rel), recursive=True, allow_not_found=True)
        for info in self.filesystem.get_file_info(selector):
            if info.type != pafs.FileType.File:
                continue
            found = PurePosixPath(info.path).relative_to(base)
            if any(p.startswith(TMP_PREFIX) or CORRUPT_MARK in p for p in found.parts):
                continue
            yield str(found), info

    def list_files(self, rel: str = "", suffix: str = "") -> list[str]:
        """Relative paths of the files under `rel` (recursive, sorted), skipping temp files and
        moved-aside ones (`move_aside`)."""
        return sorted(found for found, _ in self._file_infos(rel) if found.endswith(suffix))

    def file_sizes(self, rel: str) -> dict[str, int]:
        """The size in bytes of each file under directory `rel`, by its path relative to `rel`:
        one listing (no file is read)."""
        return {
            str(PurePosixPath(found).relative_to(rel)): info.size
            for found, info in self._file_infos(rel)
        }

    def sha256(self, rel: str) -> str:
        """The hex sha256 of file `rel` (streamed: reads the whole file once)."""
        with self.filesystem.open_input_stream(self.path(rel)) as stream:
            return stream_sha256(stream)

    def move_aside(self, rel: str) -> str | None:
        """Rename the damaged file or directory `rel` to `<rel>.corrupt-<n>` (the lowest free
        n from 1) and return that; None when `rel` is not there (e.g. moved by another process).

        Nothing is deleted: the damage stays for inspection; listings skip it. Object stores
        cannot rename a directory, so there its files are copied, then the original removed.
        """
        fs, source = self.filesystem, self.path(rel)
        kind = fs.get_file_info(source).type
        if kind == pafs.FileType.NotFound:
            return None
        n = 1
        while self.exists(f"{rel}{CORRUPT_MARK}{n}"):
            n += 1
        target = f"{rel}{CORRUPT_MARK}{n}"
        try:
            if kind == pafs.FileType.File or isinstance(fs, pafs.LocalFileSystem):
                fs.move(source, self.path(target))
                return target
            for found, _ in self._file_infos(rel):
                dest = self.path(f"{target}/{PurePosixPath(found).relative_to(rel)}")
                fs.create_dir(str(PurePosixPath(dest).parent), recursive=True)
                fs.copy_file(self.path(found), dest)
            fs.delete_dir(source)
        except FileNotFoundError:  # another process moved it first
            return None
        return target

    # ---------------------------------------------------------------- result tables

    def write_table(self, rel: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(rel, sink.getvalue().to_pybytes())

    def read_table(self, rels: list[str], schema: pa.Schema | None = None) -> pa.Table:
        """One table from several Parquet files of this store."""
        tables = [
            pq.read_table(self.path(rel), filesystem=self.filesystem, schema=schema) for rel in rels
        ]
        if tables:
            return pa.concat_tables(tables)
        return schema.empty_table() if schema is not None else pa.table({})

    # ---------------------------------------------------------------- directories

    @contextmanager
    def staged_dir(self, rel: str, marker: str) -> Iterator[Path]:
        """Yield an empty local directory; on success publish it as `rel`, `marker` last.

        An existing `rel` is replaced (a forced recomputation).
        """
        if self.local_root is not None:
            final = self.local_root / rel
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=final.parent))
            try:
                yield tmp / "content"
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp / "content", final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX))
        try:
            yield tmp / "content"
            self.delete(rel)
            files = sorted(p for p in (tmp / "content").rglob("*") if p.is_file())
            for path in sorted(files, key=lambda p: p.name == marker):  # the marker goes last
                self.write_bytes(
                    f"{rel}/{path.relative_to(tmp / 'content').as_posix()}", path.read_bytes()
                )
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def local_copy(self, rel: str, marker: str) -> Path:
        """A local directory holding the immutable directory `rel` (complete once `marker` is).

        Plain-path stores return the path itself. URI stores copy into the node-local cache
        once (atomically, by rename), then reuse it: only for content that never changes once
        published (artifacts, named by content hash).
        """
        if self.local_root is not None:
            if not (self.local_root / rel / marker).is_file():
                raise FileNotFoundError(f"{self.location(rel)}: no {marker} (not published)")
            return self.local_root / rel
        cached = self.cache_root() / "store" / rel
        if (cached / marker).exists():
            return cached
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=cached.parent))
        try:
            for file_rel in self.list_files(rel):
                target = tmp / "content" / PurePosixPath(file_rel).relative_to(rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(self.read_bytes(file_rel))
            if not (tmp / "content" / marker).is_file():
                raise FileNotFoundError(f"{self.location(rel)}: no {marker} (not published)")
            if not cached.exists():  # another process may have finished the same copy first
                os.replace(tmp / "content", cached)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cached

    @contextmanager
    def local_file(self, rel: str) -> Iterator[Path]:
        """A local path with the current content of file `rel`, for APIs that need one (MLflow
        artifact logging): the file itself, or a temporary copy removed afterwards."""
        if self.local_root is not None:
            yield self.local_root / rel
            return
        with tempfile.TemporaryDirectory(prefix=TMP_PREFIX) as tmp:
            path = Path(tmp) / PurePosixPath(rel).name
            path.write_bytes(self.read_bytes(rel))
            yield path

    def cache_root(self) -> Path:
        """A node-local directory for this store's caches (reference models, artifact copies).

        Plain-path stores keep their caches inside the run directory (`<out>/<suite>/cache`);
        URI stores use `$DDBENCH_CACHE` or the system temp dir, one folder per store URI.
        """
        if self.local_root is not None:
            return self.local_root / "cache"
        root = Path(os.environ.get(CACHE_ENV) or Path(tempfile.gettempdir()) / "ddbench-cache")
        return root / content_hash(self.uri)
