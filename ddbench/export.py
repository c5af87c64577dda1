"""`ddbench export`: a run's distillates written as plain files that other code can read, or
loaded as a torch `Dataset` (`ddbench.load_distillate`).

What lives here: `export_run` (pick a run's jobs by id or method label, or every evaluated job,
and write each one), `load_distillate` (one job's images and labels as a `Distillate`, materialised
exactly as `export_run` writes them) and the three writers behind `--format`:

- `pt`: `images.pt` and `labels.pt` (`torch.save` of exactly the stored tensors, in the
  dataset's normalised space), `lr.pt` when the distillate learned a learning rate;
- `safetensors`: one `tensors.safetensors` holding the same tensors (`images`, `labels`, `lr`);
- `imagefolder`: `<class name>/<index>.png` pixels (`normalised_to_pixels`, clamped to [0, 1],
  rounded to 8 bits) and `labels.pt` in the folder's reading order (the dataset's class order,
  then file names). Lossy: the fraction of pixel values the clamp changed (those more than half
  an 8-bit step outside [0, 1]) is returned, printed and written into the export's meta.json
  (`export.clamped_fraction`).

Every export folder holds `meta.json`: the artifact's self-describing meta (docs/results.md), with
`kind` = what the files hold (`image_set`), `value_space` (`normalised`, or `pixels` for PNGs)
and `export` (format, files, source run, source kind, materialisation); `zca.safetensors` is
copied when the dataset is ZCA-whitened, so the images can be inverted on their own.

Artifacts that store no images are materialised: a generator (GeneratorSet, the diffusion model)
draws IPC images per class at each IPC it was evaluated at (or `ipcs`), with the draw of eval
seed `seed` under fixed sampling (`ddbench.fit.draw_generator(seed, ipc, "fixed")`: exactly the
images `cross_arch`'s model of that seed trains on); a real subset (`whole_dataset`) becomes its
images. Those need the dataset, loaded from the meta's `dataset` and `dataset_params`.
The folder of one export is `<out>/<label>-ipc<ipc>-seed<distill seed>-<job id>/`.

Damage in the run is skipped and reported through `warn`, never a traceback: an artifact whose
meta.json cannot be parsed or whose files fail their digests (`verify_artifact`), and result
files that cannot be read (which only narrows the IPCs a generator is drawn at).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import TensorDataset

from ddbench.artifact import (
    META_FILE,
    ZCA_FILE,
    Artifact,
    CorruptArtifact,
    ImageSet,
    RealSubset,
    load_artifact,
    zca_state,
)
from ddbench.errors import UserError
from ddbench.registry import did_you_mean
from ddbench.version import __version__

if TYPE_CHECKING:
    from ddbench.data import RealData
    from ddbench.storage import Store

FORMATS = ("pt", "safetensors", "imagefolder")
HALF_STEP = 0.5 / 255  # half an 8-bit step: beyond it outside [0, 1], the clamp changes the PNG


@dataclass
class Exported:
    """One written export folder."""

    job_id: str
    label: str
    ipc: int
    directory: Path
    clamped_fraction: float | None  # imagefolder only: share of pixel values clamped to [0, 1]


def export_run(
    run: Store,
    jobs: list[str],
    fmt: str,
    out: Path,
    ipcs: list[int] | None = None,  # generators: IPCs to draw at; None = those evaluated
    seed: int = 0,  # generators: eval seed whose fixed draw is exported (cross_arch's first)
    warn: Callable[[str], None] = print,  # where skipped damage is reported (one line each)
) -> list[Exported]:
    """Export the named jobs (ids or method labels; [] = every job with result rows) of `run`,
    skipping (and reporting through `warn`) corrupt artifacts and unreadable result files."""
    from ddbench.runner.work import local_artifact  # copies a URI store's artifact once

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use one of {', '.join(FORMATS)}")
    metas = _artifact_metas(run, warn)
    evaluated = _evaluated_ipcs(run, warn)
    chosen = _select(metas, evaluated, jobs, run)
    datasets: dict[str, RealData] = {}
    done: list[Exported] = []
    for job_id in chosen:
        meta = metas[job_id]
        try:
            adir = local_artifact(run, job_id)
        except CorruptArtifact as exc:
            warn(f"skipped: {exc} (a rerun of its suite distils it again)")
            continue
        artifact = load_artifact(adir)
        zca = zca_state(adir)
        for ipc, images, labels, materialised in _contents(
            artifact, meta, job_id, evaluated, ipcs, seed, datasets
        ):
            directory = out / _folder_name(meta, job_id, ipc)
            lr = artifact.lr if isinstance(artifact, ImageSet) else None
            clamped = _write(fmt, directory, images, labels, lr, meta, zca)
            export_meta = {
                **meta,
                "kind": "image_set",
                "ipc": ipc,
                "value_space": "pixels" if fmt == "imagefolder" else "normalised",
                "export": {
                    "format": fmt,
                    "source_run": run.uri,
                    "source_kind": artifact.name,
                    "job_id": job_id,
                    "images": int(len(images)),
                    "label_kind": "hard" if labels.dim() == 1 else "soft",
                    "materialised": materialised,
                    "clamped_fraction": clamped,
                    "ddbench_version": __version__,
                },
            }
            if fmt == "imagefolder":
                export_meta["export"]["quantisation"] = "8-bit PNG: values rounded to k/255"
                export_meta["export"]["order"] = "class folders in class order, then file names"
            (directory / META_FILE).write_text(json.dumps(export_meta, indent=2, sort_keys=True))
            done.append(Exported(job_id, str(meta.get("label", "")), ipc, directory, clamped))
    return done


class Distillate(TensorDataset):
    """One distillate as a torch `Dataset` of (image, label): images `[C, H, W]` in the
    dataset's normalised space (`ddbench.data.normalised_to_pixels(images, meta["mean"],
    meta["std"])` gives pixels), labels hard (int64) or soft (`[K]` probabilities)."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        job_id: str,
        ipc: int,  # images per class; 0 = the whole train split (whole_dataset)
        meta: dict[str, Any],  # the artifact's meta.json (dataset, classes, method, seeds, ...)
        learned_lr: float | None,  # a learning rate distilled with the data; None: none
        materialised: dict[str, Any] | None,  # how a generator / real subset was drawn
    ) -> None:
        super().__init__(images, labels)
        self.images, self.labels = images, labels
        self.job_id, self.ipc, self.meta = job_id, ipc, meta
        self.learned_lr, self.materialised = learned_lr, materialised

    @property
    def class_names(self) -> list[str]:
        return [str(name) for name in self.meta.get("class_names", [])]

    def __repr__(self) -> str:
        return (
            f"Distillate({self.meta.get('label')!r}, job {self.job_id}, ipc={self.ipc}, "
            f"{len(self)} images {tuple(self.images.shape[1:])})"
        )


def load_distillate(run: Store, name: str, ipc: int | None = None, seed: int = 0) -> Distillate:
    """The distillate of the job `name` (a job id or a method label) of `run`, as `export_run`
    would write it: a label naming several jobs is narrowed to those with result rows and to
    `ipc`; a generator is drawn at `ipc` (default: the one IPC it was evaluated at) with the
    fixed draw of eval seed `seed`."""
    from ddbench.runner.work import local_artifact

    metas = _artifact_metas(run, print)  # damage is named (one line each), then skipped
    evaluated = _evaluated_ipcs(run, print)
    hits = _select(metas, evaluated, [name], run)
    if ipc is not None:  # per-IPC jobs at that IPC; IPC-independent ones (ipc None) draw at it
        hits = [j for j in hits if metas[j].get("ipc") in (ipc, None)]
    hits = [j for j in hits if j in evaluated] or hits  # not prerequisites or subset jobs
    if len(hits) != 1:
        found = ", ".join(f"{j} (ipc={metas[j].get('ipc')})" for j in hits) or "none"
        raise UserError(
            f"{run.uri}: {name!r} names {len(hits)} jobs at ipc={ipc}: {found}; "
            "pass ipc= or a job id"
        )
    job_id = hits[0]
    artifact = load_artifact(local_artifact(run, job_id))
    contents = _contents(
        artifact, metas[job_id], job_id, evaluated, None if ipc is None else [ipc], seed, {}
    )
    if len(contents) != 1:
        ipcs = [c[0] for c in contents]
        raise UserError(f"job {job_id} ({artifact.name}) was evaluated at IPCs {ipcs}: pass ipc=")
    at, images, labels, how = contents[0]
    return Distillate(images, labels, job_id, at, metas[job_id], artifact.learned_lr(), how)


# --------------------------------------------------------------------------- which jobs


def _artifact_metas(run: Store, warn: Callable[[str], None]) -> dict[str, dict[str, Any]]:
    metas = {}
    for rel in run.list_files("artifacts", suffix=META_FILE):
        parts = rel.split("/")
        if len(parts) != 3:  # artifacts/<job_id>/meta.json
            continue
        try:
            metas[parts[1]] = json.loads(run.read_bytes(rel))
        except ValueError:
            warn(f"skipped: artifact {parts[1]} is corrupt: {META_FILE} is not valid JSON")
    if not metas:
        raise UserError(f"{run.location('artifacts')}: no artifacts (is this a run directory?)")
    return metas


def _evaluated_ipcs(run: Store, warn: Callable[[str], None]) -> dict[str, list[int]]:
    """job id -> the IPCs its readable result rows were evaluated at (jobs the suite
    evaluated); unreadable result files are reported and skipped."""
    from ddbench.schema import read_readable, result_files

    table, unreadable = read_readable(run, result_files(run))
    for rel in unreadable:
        warn(f"skipped unreadable result file {rel} (corrupt or truncated Parquet)")
    table = table.select(["job_id", "ipc"])
    out: dict[str, set[int]] = {}
    for job_id, ipc in zip(
        table.column("job_id").to_pylist(), table.column("ipc").to_pylist(), strict=True
    ):
        out.setdefault(job_id, set()).add(int(ipc))
    return {job_id: sorted(ipcs) for job_id, ipcs in out.items()}


def _select(
    metas: dict[str, dict[str, Any]],
    evaluated: dict[str, list[int]],
    names: list[str],
    run: Store,
) -> list[str]:
    """Job ids named by id or method label, in the order given; [] = every evaluated job."""
    if not names:
        chosen = sorted((j for j in metas if j in evaluated), key=lambda j: _sort_key(metas[j], j))
        if not chosen:
            raise UserError(f"{run.uri}: no job has result rows to export; name jobs instead")
        return chosen
    chosen = []
    labels = sorted({str(m.get("label")) for m in metas.values()})
    for name in names:
        if name in metas:
            hits = [name]
        else:
            hits = [j for j, m in metas.items() if m.get("label") == name]
            hits = sorted(hits, key=lambda j: _sort_key(metas[j], j))
        if not hits:
            raise UserError(
                f"{run.uri}: no job id or method label {name!r}{did_you_mean(name, labels)}; "
                f"labels: {', '.join(labels)}"
            )
        chosen += [j for j in hits if j not in chosen]
    return chosen


def _sort_key(meta: dict[str, Any], job_id: str) -> tuple[str, int, int, str]:
    return (str(meta.get("label")), meta.get("ipc") or 0, meta.get("distill_seed") or 0, job_id)


def _folder_name(meta: dict[str, Any], job_id: str, ipc: int) -> str:
    return f"{meta.get('label', 'job')}-ipc{ipc}-seed{meta.get('distill_seed', 0)}-{job_id}"


# --------------------------------------------------------------------------- what to write


def _dataset(meta: dict[str, Any], job_id: str, cache: dict[str, RealData]) -> RealData:
    """The dataset an artifact was distilled on, from its self-describing meta."""
    from ddbench.data import load_dataset

    if "dataset" not in meta:
        raise UserError(
            f"artifact {job_id} has no `dataset` in its meta.json (distilled before ddbench wrote "
            "self-describing metas): rerun its suite with --force --only LABEL to rewrite it"
        )
    key = json.dumps([meta["dataset"], meta.get("dataset_params") or {}], sort_keys=True)
    if key not in cache:
        cache[key] = load_dataset(meta["dataset"], meta.get("dataset_params") or {})
    real = cache[key]
    if meta.get("classes") is not None:  # a class-subset job
        real = real.subset(meta["classes"])
    return real


def _contents(
    artifact: Artifact,
    meta: dict[str, Any],
    job_id: str,
    evaluated: dict[str, list[int]],
    ipcs: list[int] | None,
    seed: int,
    datasets: dict[str, RealData],
) -> list[tuple[int, torch.Tensor, torch.Tensor, dict[str, Any] | None]]:
    """(ipc, normalised images, labels, how they were materialised) for each export of a job."""
    if isinstance(artifact, ImageSet):  # exactly the stored tensors
        return [(int(meta.get("ipc") or 0), artifact.images, artifact.labels, None)]
    real = _dataset(meta, job_id, datasets)
    if isinstance(artifact, RealSubset):
        x, y = artifact.materialise(0, real, torch.Generator())
        return [(0, x, y, {"from": "real train split", "indices": int(len(artifact.indices))})]
    from ddbench.fit import draw_generator

    todo = ipcs or [i for i in evaluated.get(job_id, []) if i > 0]
    if not todo:
        raise UserError(
            f"artifact {job_id} ({artifact.name}) is a generator without result rows: "
            "give --ipc to say how many images per class to draw"
        )
    out = []
    for ipc in todo:
        x, y = artifact.materialise(ipc, real, draw_generator(seed, ipc, "fixed"))
        how = {
            "from": artifact.name,
            "ipc": ipc,
            "seed": seed,
            "stream": f"derive_seed('generator_draw', {seed}, {ipc}, 'fixed')",
            "note": f"the draw cross_arch's eval seed {seed} trains on (sampling: fixed)",
        }
        out.append((ipc, x.detach().cpu(), y, how))
    return out


# --------------------------------------------------------------------------- writers


def _write(
    fmt: str,
    directory: Path,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: torch.Tensor | None,
    meta: dict[str, Any],
    zca: dict[str, torch.Tensor] | None,
) -> float | None:
    """Write one export folder's tensors or PNGs; returns the clamped fraction (imagefolder)."""
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tensors = {"images": images, "labels": labels}
    if lr is not None:
        tensors["lr"] = lr
    tensors = {k: v.detach().cpu().clone().contiguous() for k, v in tensors.items()}
    if zca is not None:
        from safetensors.torch import save_file

        save_file(dict(zca), str(directory / ZCA_FILE))
    if fmt == "pt":
        for name, tensor in tensors.items():
            torch.save(tensor, directory / f"{name}.pt")
        return None
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(directory / "tensors.safetensors"))
        return None
    return _write_folder(directory, tensors, meta, zca)


def _write_folder(
    directory: Path,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    zca: dict[str, torch.Tensor] | None,
) -> float:
    """PNGs per class folder (pixels, clamped, 8-bit) and labels.pt in the reading order."""
    import numpy as np
    from PIL import Image

    from ddbench.data import normalised_to_pixels

    if "mean" not in meta or "class_names" not in meta:
        raise UserError(
            f"artifact {meta.get('job_id')} has no mean / class_names in its meta.json "
            "(distilled before self-describing metas): export --format pt instead"
        )
    images, labels = tensors["images"].float(), tensors["labels"]
    if meta.get("zca", {}).get("applied") and zca is None:
        raise UserError(f"artifact {meta.get('job_id')}: ZCA-whitened but {ZCA_FILE} is missing")
    pixels = normalised_to_pixels(images, meta["mean"], meta["std"], zca, clamp=False)
    # values whose 8-bit PNG value the clamp changes (float noise around 0 and 1 rounds away)
    outside = (pixels < -HALF_STEP) | (pixels > 1 + HALF_STEP)
    clamped = float(outside.float().mean()) if pixels.numel() else 0.0
    pixels = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    if pixels.shape[1] not in (1, 3):
        raise UserError(f"imagefolder: {pixels.shape[1]} channels cannot be PNGs (1 or 3 only)")
    names = [str(n) for n in meta["class_names"]]
    for name in names:
        if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
            raise UserError(f"imagefolder: class name {name!r} cannot be a folder name")
    hard = labels if labels.dim() == 1 else labels.argmax(dim=1)
    width = max(5, len(str(len(images) - 1)))
    for i, (img, label) in enumerate(zip(pixels, hard.tolist(), strict=True)):
        folder = directory / names[label]
        folder.mkdir(exist_ok=True)
        arr = img.permute(1, 2, 0).numpy()
        arr = arr[:, :, 0] if arr.shape[2] == 1 else arr
        Image.fromarray(np.ascontiguousarray(arr)).save(folder / f"{i:0{width}d}.png")
    order = torch.argsort(hard, stable=True)  # class order, then index = file name order
    torch.save(labels[order].clone(), directory / "labels.pt")
    if "lr" in tensors:
        torch.save(tensors["lr"], directory / "lr.pt")
    return clamped
