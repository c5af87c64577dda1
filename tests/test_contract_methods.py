"""Contract tests over every registered method: smoke-distil on the real digits data."""

from __future__ import annotations

import pytest
import torch

from ddbench.artifact import artifact_exists, load_artifact
from ddbench.context import LocalContext
from ddbench.methods import METHODS, get_method
from tests.conftest import write_distillate


def inputs(name: str, real, ipc: int, tmp_path) -> dict:
    """Params a method needs beyond its smoke params: `from_files` reads a distillate's files."""
    if name != "from_files":
        return {}
    return write_distillate(real, ipc, tmp_path / f"files-ipc{ipc}")


def distil(name: str, real, ipc: int, tmp_path, seed: int = 0, params: dict | None = None):
    """Smoke-distil `name`, first distilling its dependencies into tmp_path."""
    method = get_method(name)
    given = {**method.smoke, **inputs(name, real, ipc, tmp_path), **(params or {})}
    p = method.Params.model_validate(given)
    deps = {}
    for key, (dep_name, dep_params) in method.dependencies(p).items():
        dep_dir = tmp_path / f"dep-{dep_name}-{seed}"
        if not artifact_exists(dep_dir):
            dep_method = get_method(dep_name)
            dep_p = dep_method.Params.model_validate({**dep_method.smoke, **dep_params})
            dep_method.distill(real, ipc, dep_p, LocalContext(seed)).save(dep_dir)
        deps[key] = str(dep_dir)
    return method.distill(real, ipc, p, LocalContext(seed, dependencies=deps))


# methods whose smoke run pre-trains a diffusion model (over 10 s) are `slow`: make test-fast
# skips them, make test runs them
PRETRAINING = {"d4m", "latent_diffusion"}
SMOKE_NAMES = [
    pytest.param(n, marks=pytest.mark.slow) if n in PRETRAINING else n for n in METHODS.names()
]


@pytest.mark.parametrize("name", SMOKE_NAMES)
def test_method_contract(name, digits, tmp_path):
    method = get_method(name)
    assert method.paper and method.version >= 1
    for field in method.Params.model_fields:  # shared names only: snake_case identifiers
        assert field.isidentifier() and field == field.lower()
    with pytest.raises(Exception, match="(?i)extra|unknown|not permitted"):
        method.Params.model_validate({"no_such_param": 1})
    ipc = 2
    artifact = distil(name, digits, ipc, tmp_path)
    x, y = artifact.materialise(ipc, digits, torch.Generator().manual_seed(0))
    assert x.shape[1:] == digits.train_x.shape[1:]
    assert torch.isfinite(x).all()
    hard = y if y.dim() == 1 else y.argmax(1)
    assert set(hard.tolist()) == set(digits.classes)
    if not method.ipc_independent:
        assert len(x) == ipc * digits.num_classes
    assert artifact.artifact_bytes() > 0
    artifact.save(tmp_path / "artifact")
    loaded = load_artifact(tmp_path / "artifact")
    x2, y2 = loaded.materialise(ipc, digits, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2) and torch.equal(y, y2)
    # deterministic: the same seed distils the same artifact again (dependencies included)
    again = distil(name, digits, ipc, tmp_path / "again")
    x3, y3 = again.materialise(ipc, digits, torch.Generator().manual_seed(0))
    assert torch.equal(x, x3) and torch.equal(y, y3)


def test_coresets_pick_real_images(digits, tmp_path):
    for name in ("random_real", "herding", "kcenter"):
        artifact = distil(name, digits, 3, tmp_path)
        idx = torch.tensor(artifact.meta["indices"])
        assert torch.equal(artifact.images, digits.train_x[idx])
        assert len(set(idx.tolist())) == len(idx)


def test_herding_tracks_the_class_mean():
    from ddbench.methods._coreset import herding_greedy, kcenter_greedy

    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(200, 5, generator=gen)
    chosen = herding_greedy(feats, 10)
    rand = torch.randperm(200, generator=gen)[:10]
    err = (feats[chosen].mean(0) - feats.mean(0)).norm()
    assert err < (feats[rand].mean(0) - feats.mean(0)).norm()
    centers = kcenter_greedy(feats, 10)
    assert len(set(centers)) == 10
