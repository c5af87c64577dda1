"""The narrow waist between methods and evaluators: what a distill job produces.

- `ImageSet`: synthetic (or selected) images, normalised like the real data, with hard labels
  [N] or soft labels [N, K]. Pixel methods and coreset baselines produce one.
- `RealSubset`: indices into the real train split (the whole-dataset reference); nothing but the
  indices is stored, but `artifact_bytes` counts the images it stands for.
- `GeneratorSet`: a class-conditional generator (cgan, dim, d2m): its weights and the JSON config
  `ddbench.generators.build_generator` rebuilds it from. One artifact serves every IPC: it
  materialises IPC images per class on demand and `sample`s fresh draws for the `fresh` /
  `time_matched` evaluation modes (`ddbench.fit`).

Evaluators call `artifact.materialise(ipc, real, generator)` and get (images, labels) to train on.
Artifacts are saved as `tensors.safetensors` + `meta.json` in a directory; `load_artifact` reads any
kind back by the `kind` field of meta.json (the kind's `name`). The runner's `distill_job` adds
what makes the directory self-describing (dataset, classes, normalisation, image shape, method,
seeds; the ZCA matrices as `zca.safetensors` when the dataset is whitened:
docs/results.md#artifact-metadata).
A new kind subclasses `Artifact` with a snake_case `name` (stored as meta.json's `kind`: never
rename a kind, stored artifacts are read back by it) and registers with `@ARTIFACT_KINDS.register`.

Integrity: meta.json's `files` maps each other file of the directory to its size and sha256
(`record_files`, when the directory is written); `verify_artifact` checks a directory against
it, cheaply (sizes) or fully (digests), and raises `CorruptArtifact`. A file added to an artifact
directory is covered by calling `record_files` once it is written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from ddbench.registry import Plugin, Registry
from ddbench.storage import Store, stream_sha256

if TYPE_CHECKING:
    import torch

    from ddbench.data import RealData

META_FILE = "meta.json"
TENSOR_FILE = "tensors.safetensors"
# the dataset's ZCA matrices beside an artifact of a ZCA-whitened dataset (`distill_job`), so its
# images can be turned back into pixels without the dataset (`zca_state`)
ZCA_FILE = "zca.safetensors"
ARTIFACT_KINDS: Registry[type[Artifact]] = Registry("artifact kind")
# meta.json key: {file name: {"bytes": size, "sha256": hex digest}} of every other file
FILES_KEY = "files"


class CorruptArtifact(Exception):
    """An artifact directory that does not match its meta.json: a missing, truncated or altered
    file, or a meta.json that is missing or not JSON. `job_id` is set once known."""

    def __init__(self, file: str, problem: str, job_id: str | None = None) -> None:
        super().__init__(file, problem, job_id)
        self.file, self.problem, self.job_id = file, problem, job_id

    def __str__(self) -> str:
        who = f"artifact {self.job_id}" if self.job_id else "artifact"
        return f"{who} is corrupt: {self.file} {self.problem}"


class Artifact(Plugin):
    """Base class: save / load and the size in bytes of what must be stored.

    A kind's `name` is the `kind` field of its meta.json."""

    meta: dict[str, Any]

    def tensors(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> Artifact:
        raise NotImplementedError

    def extra_meta(self) -> dict[str, Any]:
        """Fields a kind needs to rebuild itself beside its tensors."""
        return {}

    def artifact_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    def materialise(
        self, ipc: int, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def preview(
        self, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Images to draw in the grid of the report and MLflow (None: nothing to show)."""
        return None

    def learned_lr(self) -> float | None:
        """A learning rate distilled with the data (MTT / DATM's `syn_lr`), which evaluators
        train with instead of their recipe's `lr` (`ddbench.fit.artifact_recipe`); None: none."""
        return None

    def save(self, directory: str | Path) -> None:
        """Write atomically: a temporary sibling directory renamed into place."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=directory.parent))
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.tensors().items()}
        save_file(tensors, str(tmp / TENSOR_FILE))
        meta = {
            "kind": self.name,
            "artifact_bytes": self.artifact_bytes(),
            **self.meta,
            **self.extra_meta(),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
        record_files(tmp)
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(tmp, directory)


def load_artifact(directory: str | Path) -> Artifact:
    from safetensors.torch import load_file

    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    kind = meta.pop("kind")
    meta.pop("artifact_bytes", None)
    return ARTIFACT_KINDS.get(kind).from_tensors(load_file(str(directory / TENSOR_FILE)), meta)


def record_files(directory: str | Path) -> None:
    """Record the size and sha256 of every file of `directory` but meta.json under its
    `FILES_KEY` (replacing what was there): call it once the directory's files are written."""
    directory = Path(directory)
    meta = json.loads((directory / META_FILE).read_text())
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != META_FILE):
        with path.open("rb") as stream:
            digest = stream_sha256(stream)
        files[path.relative_to(directory).as_posix()] = {
            "bytes": path.stat().st_size,
            "sha256": digest,
        }
    meta[FILES_KEY] = files
    (directory / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))


def verify_artifact(store: Store, rel: str, deep: bool = True) -> dict[str, Any]:
    """Check the artifact directory `rel` of `store` against its meta.json; return that meta.

    Raises `CorruptArtifact` when meta.json is missing or not a JSON object, when a file it
    records is missing or has another size, and (`deep`) when a file's sha256 differs.
    Cost: `deep=False` reads meta.json and lists the directory (sizes come from the listing),
    never a tensor byte, so it stays cheap on an object store; `deep=True` also reads every
    recorded file once through sha256 (about a second per GB on one core, plus the download
    on a URI store). Artifacts written before digests were recorded (no `files` key) are
    accepted as they are: only their meta.json is checked. A flipped byte inside meta.json that
    keeps it valid JSON is not detected (it holds no digest of itself).
    """
    try:
        meta = json.loads(store.read_bytes(f"{rel}/{META_FILE}"))
    except FileNotFoundError:
        raise CorruptArtifact(META_FILE, "is missing") from None
    except ValueError:  # also UnicodeDecodeError
        raise CorruptArtifact(META_FILE, "is not valid JSON") from None
    files = meta.get(FILES_KEY, {}) if isinstance(meta, dict) else None
    if not isinstance(files, dict) or not all(
        isinstance(f, dict) and {"bytes", "sha256"} <= f.keys() for f in files.values()
    ):
        raise CorruptArtifact(META_FILE, f"is not an artifact's meta (no valid {FILES_KEY!r})")
    sizes = store.file_sizes(rel) if files else {}
    for name, want in sorted(files.items()):
        if name not in sizes:
            raise CorruptArtifact(name, "is missing")
        if sizes[name] != want["bytes"]:
            raise CorruptArtifact(
                name, f"has {sizes[name]} bytes where {want['bytes']} were written (truncated?)"
            )
    for name, want in sorted(files.items()) if deep else ():
        if store.sha256(f"{rel}/{name}") != want["sha256"]:
            raise CorruptArtifact(name, "does not match its sha256 digest (altered bytes)")
    return meta


def artifact_exists(directory: str | Path) -> bool:
    return (Path(directory) / META_FILE).is_file()


def zca_state(directory: str | Path) -> dict[str, torch.Tensor] | None:
    """The ZCA matrices stored beside an artifact (`ZCA_FILE`), or None when its dataset is
    not ZCA-whitened (or the artifact predates the file)."""
    from safetensors.torch import load_file

    path = Path(directory) / ZCA_FILE
    return load_file(str(path)) if path.is_file() else None


@ARTIFACT_KINDS.register
@dataclass
class ImageSet(Artifact):
    """A small set of images (normalised like the real data) and their labels.

    `labels` is int64 [N] (hard) or float [N, K] (soft, e.g. a teacher's probabilities).
    `lr`, when set, is a learned learning rate (a float32 scalar, MTT / DATM's `syn_lr`) stored
    as the tensor `lr` beside them; evaluators train with it instead of the recipe's `lr`.
    """

    images: torch.Tensor
    labels: torch.Tensor
    meta: dict[str, Any] = field(default_factory=dict)
    lr: torch.Tensor | None = None  # None: train with the evaluator's recipe lr
    name: ClassVar[str] = "image_set"

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"images": self.images, "labels": self.labels}
        if self.lr is not None:  # absent otherwise: artifacts without one keep their bytes
            out["lr"] = self.lr
        return out

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> ImageSet:
        return cls(tensors["images"], tensors["labels"], meta, tensors.get("lr"))

    def learned_lr(self) -> float | None:
        return None if self.lr is None else float(self.lr)

    def hard_labels(self) -> torch.Tensor:
        return self.labels if self.labels.dim() == 1 else self.labels.argmax(dim=1)

    def materialise(
        self, ipc: int, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images, self.labels

    def preview(
        self, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.images, self.labels


@ARTIFACT_KINDS.register
@dataclass
class RealSubset(Artifact):
    """Indices into the real train split; `artifact_bytes` counts the float32 images they name."""

    indices: torch.Tensor
    image_numel: int  # C * H * W of one image
    meta: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "real_subset"

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"indices": self.indices}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> RealSubset:
        meta = dict(meta)
        return cls(tensors["indices"], int(meta.pop("image_numel")), meta)

    def extra_meta(self) -> dict[str, Any]:
        return {"image_numel": self.image_numel}

    def artifact_bytes(self) -> int:
        return int(self.indices.numel()) * self.image_numel * 4

    def materialise(
        self, ipc: int, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return real.train_x[self.indices], real.train_y[self.indices]


@ARTIFACT_KINDS.register
@dataclass
class GeneratorSet(Artifact):
    """A class-conditional generator: `state_dict` + the config that rebuilds its module.

    `config` is `ddbench.generators.generator_config(...)` (architecture, noise_dim, num_classes,
    image size, the dataset's mean / std). Images come out normalised like the real data.
    `artifact_bytes` counts every stored tensor (parameters and BatchNorm statistics: what must be
    kept to sample), not the images it can produce.
    """

    state_dict: dict[str, torch.Tensor]
    config: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    name: ClassVar[str] = "generator_set"
    sample_batch: ClassVar[int] = 1024  # images per forward pass when drawing many (bounds memory)

    def __post_init__(self) -> None:
        self._module: torch.nn.Module | None = None
        self._module_device: str | None = None

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])

    @property
    def noise_dim(self) -> int:
        return int(self.config["noise_dim"])

    def tensors(self) -> dict[str, torch.Tensor]:
        return self.state_dict

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> GeneratorSet:
        meta = dict(meta)
        return cls(dict(tensors), dict(meta.pop("generator_config")), meta)

    def extra_meta(self) -> dict[str, Any]:
        return {"generator_config": self.config}

    def num_parameters(self) -> int:
        """Learnable parameters of the generator (BatchNorm statistics excluded)."""
        return sum(p.numel() for p in self.module().parameters())

    def module(self, device: str = "cpu") -> torch.nn.Module:
        """The generator in eval mode on `device`, built once and cached."""
        if self._module is None or self._module_device != device:
            from ddbench.generators import build_generator

            net = build_generator(self.config)
            net.load_state_dict(self.state_dict)
            self._module, self._module_device = net.to(device).eval(), device
        return self._module

    def class_labels(self, per_class: int, real: RealData) -> torch.Tensor:
        """`per_class` labels of each class present in `real` (grouped by class)."""
        import torch

        return torch.tensor([c for c in real.classes for _ in range(per_class)], dtype=torch.long)

    def sample(
        self, labels: torch.Tensor, generator: torch.Generator, device: str = "cpu"
    ) -> torch.Tensor:
        """One image per label from fresh noise drawn with `generator` (eval mode, no grad).

        The noise is drawn on the CPU, so the images depend only on the generator's seed."""
        import torch

        net = self.module(device)
        noise = torch.randn(len(labels), self.noise_dim, generator=generator)
        out = []
        with torch.no_grad():
            for start in range(0, len(labels), self.sample_batch):
                z = noise[start : start + self.sample_batch].to(device)
                y = labels[start : start + self.sample_batch].to(device)
                out.append(net(z, y).float())
        if not out:
            size = int(self.config["image_size"])
            return torch.zeros(0, int(self.config["channels"]), size, size, device=device)
        return torch.cat(out)

    def materialise(
        self, ipc: int, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One draw of `ipc` images per class (CPU tensors)."""
        labels = self.class_labels(ipc, real)
        return self.sample(labels, generator).cpu(), labels

    def preview(
        self, real: RealData, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.materialise(10, real, generator)
