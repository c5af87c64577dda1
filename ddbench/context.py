"""Context: what a method or evaluator may know about where it runs.

Methods and evaluators are plain PyTorch. They receive a `Context` that gives them
- `device`, `rank`, `world_size` (data-parallel distillation across Ray Train workers);
- `rng(name)`: a `torch.Generator` seeded from the job seed and the stream name (never the clock,
  never the rank: every worker draws the same numbers, so the work can be split without changing
  what is computed);
- `shard(n)`: the block of n items (classes, rows of a global batch) this rank works on, and
  `all_reduce_sum_(tensor)`: sum the ranks' partial gradients (no-op with one worker); with both,
  a method's result does not depend on the number of workers;
- `report(**metrics)`: progress (iteration, loss, images/s), throttled;
- `save_checkpoint(step, state)` / `load_checkpoint()`: resume after a lost worker.

Where progress and checkpoints go is the flavour's business: a subclass overrides `_emit` (a
progress line and, when given, a checkpoint state) and `load_checkpoint`. `LocalContext` runs
in-process (unit tests, `--local`) and keeps checkpoints in memory; the runner's `RayContext`
(`ddbench.runner.train`) sends them through Ray Train. This module never imports ray.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ddbench.seeding import derive_seed

if TYPE_CHECKING:
    import torch


class Context:
    """Execution context of one distill job or eval cell."""

    def __init__(
        self,
        seed: int,
        device: str = "cpu",
        rank: int = 0,
        world_size: int = 1,
        report_every_s: float = 5.0,  # seconds between progress lines; keeps logs readable
        log: Callable[[str], None] | None = None,
        dependencies: dict[str, str] | None = None,
    ) -> None:
        self.seed = seed
        self.dependencies = dependencies or {}  # key -> artifact directory of a prerequisite job
        self.cache_dir: str | None = None  # shared reference models (D4M teacher); set by runner
        self.device = device
        self.rank = rank
        self.world_size = world_size
        self._report_every_s = report_every_s
        self._last_report = float("-inf")
        self._log = log
        self.name: str | None = None  # what progress lines start with (the job); set by runner

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def stream_seed(self, name: str) -> int:
        """The seed of a named stream: the same on every rank."""
        # the trailing None once held the rank of per-rank streams; kept so that every stream
        # keeps its seed (and artifacts cached under unchanged method versions stay valid)
        return derive_seed(self.seed, name, None)

    def rng(self, name: str, device: str = "cpu") -> torch.Generator:
        """A fresh generator for stream `name` (same name, same numbers, on every rank)."""
        import torch

        return torch.Generator(device=device).manual_seed(self.stream_seed(name))

    def shard(self, n: int) -> range:
        """The indices of `n` items (classes, rows of a global batch) this rank works on:
        contiguous, balanced blocks in rank order (sizes differ by at most one; with more ranks
        than items, some ranks get none). The blocks of all ranks together are range(n) in
        order, so a sum over shards is the one-worker sum."""
        start = self.rank * n // self.world_size
        return range(start, (self.rank + 1) * n // self.world_size)

    def all_reduce_sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum `tensor` in place across data-parallel workers (no-op with one worker): each rank
        holds the gradient of its shard of one loss, the sum is the one-worker gradient."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def broadcast_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Copy rank 0's tensor to every worker (keeps ranks identical after init)."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.broadcast(tensor, src=0)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value` (a picklable object), in rank order."""
        if self.world_size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        """Wait until every worker gets here."""
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def report(
        self, force: bool = False, checkpoint: dict[str, Any] | None = None, **metrics: float
    ) -> None:
        """Progress (and optionally a checkpoint state) from the training loop.

        Plain progress is throttled to one line every `report_every_s`; a checkpoint is always
        passed on, since resuming depends on it.
        """
        now = time.monotonic()
        if checkpoint is None and not force and now - self._last_report < self._report_every_s:
            return
        self._last_report = now
        self._emit(metrics, checkpoint)

    def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
        """Pass on one progress event (and a checkpoint state, which this base flavour cannot
        keep): a log line from the main rank, after the job's `name` when it has one."""
        if self._log is not None and self.is_main:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in metrics.items())
            self._log(f"{self.name}: {shown}" if self.name else shown)

    def save_checkpoint(self, state: dict[str, Any], **metrics: float) -> None:
        """Persist `state` (tensors and plain values) so a restarted job resumes from it."""
        self.report(checkpoint=state, **metrics)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last saved state of this job, or None on a fresh start."""
        return None


class LocalContext(Context):
    """In-process context: one rank, checkpoints kept in memory (tests can inspect them)."""

    def __init__(
        self,
        seed: int,
        device: str = "cpu",
        log: Callable[[str], None] | None = None,
        dependencies: dict[str, str] | None = None,
    ):
        self.checkpoints: list[dict[str, Any]] = []
        super().__init__(seed, device=device, log=log, dependencies=dependencies)

    def _emit(self, metrics: dict[str, float], checkpoint: dict[str, Any] | None) -> None:
        if checkpoint is not None:  # a snapshot: CPU tensors may alias the live training state
            self.checkpoints.append(copy.deepcopy(checkpoint))
        super()._emit(metrics, None)

    def load_checkpoint(self) -> dict[str, Any] | None:
        return self.checkpoints[-1] if self.checkpoints else None


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def pick_device(requested: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'."""
    if requested != "auto":
        return requested
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
