"""Distillation methods: one file per method in this folder, found automatically.

A method is a class with a name, the paper it implements, a version (bump it when results would
change: it is part of the job id), a pydantic `Params` model whose every field carries a comment
with its unit and reason, `smoke` overrides that finish in seconds on `digits`, and::

    def distill(self, real: RealData, ipc: int | None, params: Params, ctx: Context) -> Artifact

(`ipc` is None for an `ipc_independent` method: its one artifact serves every IPC.)

`distill` is plain PyTorch: it draws randomness only from named streams (`ctx.rng(name)`, the same
on every rank), reports progress with `ctx.report(...)`, and may checkpoint with
`ctx.save_checkpoint` / `ctx.load_checkpoint`. When several Ray Train workers share the job, the
artifact must not depend on how many: a method splits its work with `ctx.shard(n)` (the pixel
methods split the classes of their loss, `_pixel`; the batch-trained ones the rows of each global
batch, `_parallel`) and sums the ranks' gradients with `ctx.all_reduce_sum_`, or (`d4m`, the
coresets) computes the same thing on every rank. To add one::

    @register_method
    class MyMethod(Method):
        name = "my_method"
        paper = "Author et al., Venue Year"
        class Params(MethodParams):
            iterations: int = 1000  # outer steps; the paper's value
        def distill(self, real, ipc, params, ctx): ...

A method evaluated differently in its paper says how as data, `paper_protocol` (the `cross_arch`
params its paper uses, e.g. DiM's `{"sampling": "fresh"}`), and may list the numbers its paper
reports as `published` (`ddbench.protocols`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ddbench.registry import Plugin, Registry

if TYPE_CHECKING:
    from ddbench.artifact import Artifact
    from ddbench.context import Context
    from ddbench.data import RealData
    from ddbench.protocols import Published


class MethodParams(BaseModel):
    """Base of every method's Params: unknown keys are errors.

    `execution_fields` names the params that only say how a job runs, not what it computes
    (checkpoint spacing, memory layout, compilation: the artifact is the same up to
    floating-point rounding): they stay out of the job id, so changing them reuses artifacts.
    `added_fields` names params added after the method's job ids were in use whose default is
    the behaviour from before: they enter the job id only when set to another value, so jobs
    that leave them alone keep their ids (and artifacts)."""

    model_config = ConfigDict(extra="forbid")
    execution_fields: ClassVar[frozenset[str]] = frozenset()
    added_fields: ClassVar[frozenset[str]] = frozenset()


class Method(Plugin):
    paper: ClassVar[str]
    version: ClassVar[int] = 1
    Params: ClassVar[type[MethodParams]] = MethodParams
    smoke: ClassVar[dict[str, Any]] = {}
    # True when one artifact serves every IPC (a generator, the whole dataset): distilled once.
    ipc_independent: ClassVar[bool] = False
    # The paper's evaluation protocol as `cross_arch` params over the shared protocol
    # (`ddbench.protocols`); {} = the shared one: the DC recipe with hard labels.
    paper_protocol: ClassVar[dict[str, Any]] = {}
    # Test top-1 numbers the paper reports under that protocol, for the report's "paper" column.
    published: ClassVar[tuple[Published, ...]] = ()

    def dependencies(self, params: Any) -> dict[str, tuple[str, dict[str, Any]]]:
        """Artifacts this method starts from: {key: (method name, params)}.

        The plan turns each into a cached job of its own (shared with an identical job of the
        suite) that runs first; `distill` finds its artifact directory in
        `ctx.dependencies[key]`. Example: d2m starts from the `cgan` generator.
        """
        return {}

    def check(self, real: RealData, ipc: int | None, params: Any) -> None:
        """Cheap checks of a job's inputs against the dataset, run on the driver before any
        work (`ddbench run` / `ddbench eval`); raise `UserError` to stop the run with exit code
        2. Default: nothing to check (`from_files` checks the user's files here)."""

    def eval_ipcs(self, suite_ipcs: list[int]) -> list[int]:
        """The IPCs at which an ipc-independent artifact is evaluated."""
        return list(suite_ipcs)

    def distill(self, real: RealData, ipc: int | None, params: Any, ctx: Context) -> Artifact:
        raise NotImplementedError


METHODS: Registry[type[Method]] = Registry("method", "ddbench.methods", builtins=__name__)


register_method = METHODS.register  # the class decorator of a method plugin


def get_method(name: str) -> Method:
    return METHODS.get(name)()
