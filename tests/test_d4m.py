"""D4M and its latent_diffusion prerequisite: end to end on tiny data on the CPU, the plan's
sharing of the pretraining job, and the `pretrained` path (a Stable-Diffusion-format directory
written here with save_pretrained, loaded offline).

Limitation: `transformers` is not a ddbench dependency, so the text-conditioned branch (CLIP
tokenizer + text encoder) is tested only where it is installed; without it a directory holding
a text encoder must give a clear error, which is tested instead.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ddbench.artifact import ImageSet, load_artifact
from ddbench.context import LocalContext
from ddbench.errors import UserError
from ddbench.methods import get_method
from ddbench.methods.latent_diffusion import DiffusionModel

TINY_LD = {  # seconds: one pass of each stage with narrow networks
    "vae_epochs": 1,
    "unet_epochs": 1,
    "vae_channels": [8, 16],
    "unet_channels": [16, 32],
    "embed_dim": 16,
    "batch_size": 64,
}


@pytest.fixture(scope="module")
def tiny(digits):
    """digits with 30 train images per class (the val / test splits kept)."""
    idx = torch.cat([digits.class_indices(c)[:30] for c in digits.classes])
    return replace(digits, train_x=digits.train_x[idx], train_y=digits.train_y[idx])


@pytest.fixture(scope="module")
def diffusion_dir(tiny, tmp_path_factory):
    method = get_method("latent_diffusion")
    model = method.distill(tiny, 0, method.Params(**TINY_LD), LocalContext(0))
    path = tmp_path_factory.mktemp("ld") / "latent_diffusion"
    model.save(path)
    return path


def d4m(real, ipc: int, deps: dict | None = None, seed: int = 0, **params) -> ImageSet:
    method = get_method("d4m")
    p = method.Params(**{"inference_steps": 4, "pretrain": TINY_LD, **params})
    return method.distill(real, ipc, p, LocalContext(seed, dependencies=deps or {}))


@pytest.mark.slow  # pre-trains a diffusion model (6 s)
def test_latent_diffusion_artifact_round_trip(tiny, diffusion_dir, monkeypatch):
    monkeypatch.setattr(DiffusionModel, "sample_steps", 4)  # seconds, not minutes
    model = load_artifact(diffusion_dir)
    assert isinstance(model, DiffusionModel)
    assert model.meta["scaling_factor"] > 0 and model.artifact_bytes() > 0
    x, y = model.materialise(2, tiny, torch.Generator().manual_seed(0))
    assert x.shape == (20, 1, 8, 8) and torch.isfinite(x).all()
    assert y.tolist() == [c for c in range(10) for _ in range(2)]
    x2, _ = model.materialise(2, tiny, torch.Generator().manual_seed(0))
    assert torch.equal(x, x2)


def test_d4m_end_to_end_is_deterministic(tiny, diffusion_dir):
    deps = {"diffusion": str(diffusion_dir)}
    a = d4m(tiny, 3, deps)
    assert a.images.shape == (30, 1, 8, 8) and torch.isfinite(a.images).all()
    assert a.labels.tolist() == [c for c in range(10) for _ in range(3)]
    assert a.meta["init"] == "prototype" and a.meta["conditioning"] == "label_embedding"
    assert a.meta["synthesis_seconds_per_image"] > 0 and a.meta["peak_rss_bytes"] > 0
    b = d4m(tiny, 3, deps)
    assert torch.equal(a.images, b.images)
    rand = d4m(tiny, 3, deps, init="random")  # Tab. 4 "w/o PT": from pure noise
    assert rand.meta["init"] == "random" and rand.images.shape == a.images.shape
    assert not torch.equal(rand.images, a.images)


def test_class_embedding_conditioning(tiny, tmp_path):
    method = get_method("latent_diffusion")
    params = method.Params(**TINY_LD, conditioning="class_embedding")
    model = method.distill(tiny, 0, params, LocalContext(0))
    assert not any(k.startswith("label_embedding.") for k in model.state_dict)
    model.save(tmp_path / "ld")
    out = d4m(tiny, 2, {"diffusion": str(tmp_path / "ld")})
    assert out.meta["conditioning"] == "class_embedding" and out.images.shape == (20, 1, 8, 8)


def test_d4m_needs_a_model(tiny):
    with pytest.raises(UserError, match="latent_diffusion"):
        d4m(tiny, 1)


def test_plan_shares_one_pretraining_job_across_ipcs(tmp_path):
    from ddbench.plan import make_plan
    from ddbench.spec import load_suite

    suite = {
        "name": "d4m_plan",
        "dataset": {"name": "digits"},
        "ipc": [1, 10],
        "methods": [
            {"name": "d4m", "params": {"pretrain": TINY_LD}},
            {
                "name": "d4m",
                "label": "d4m_random",
                "params": {"init": "random", "pretrain": TINY_LD},
            },
        ],
        "evals": [{"name": "cross_arch"}],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps(suite))
    plan = make_plan(load_suite(path))
    ld_jobs = [j for j in plan.jobs if j.method == "latent_diffusion"]
    d4m_jobs = [j for j in plan.jobs if j.method == "d4m"]
    assert len(ld_jobs) == 1 and len(d4m_jobs) == 4
    assert not ld_jobs[0].eval_ipcs  # a prerequisite only: not evaluated
    assert all(j.depends == (("diffusion", ld_jobs[0].job_id),) for j in d4m_jobs)
    assert plan.jobs.index(ld_jobs[0]) < min(plan.jobs.index(j) for j in d4m_jobs)
    assert get_method("d4m").dependencies(get_method("d4m").Params(pretrained="/x")) == {}


# --------------------------------------------------------------------------- pretrained dirs


def write_sd_dir(root: Path, text: bool = False, class_embeds: int | None = 11) -> Path:
    """A tiny Stable-Diffusion-format directory: 3-channel VAE at 16 px (latent 8 x 8),
    a UNet (class-conditional, or cross-attending to a text encoder), a DDIM scheduler."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=8,
        num_class_embeds=class_embeds,
    ).save_pretrained(root / "unet")
    DDIMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1
    ).save_pretrained(root / "scheduler")
    if text:
        write_text_encoder(root)
    return root


def write_text_encoder(root: Path) -> None:
    """A tiny CLIP tokenizer (a local byte-level vocabulary) and text encoder (width 16)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    (root / "tokenizer").mkdir(parents=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [str(d) for d in range(10)]
    tokens = ["<|startoftext|>", "<|endoftext|>"] + letters + [f"{t}</w>" for t in letters]
    vocab = {t: i for i, t in enumerate(tokens)}
    (root / "tokenizer" / "vocab.json").write_text(json.dumps(vocab))
    (root / "tokenizer" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(
        str(root / "tokenizer" / "vocab.json"), str(root / "tokenizer" / "merges.txt")
    )
    tokenizer.model_max_length = 8
    tokenizer.save_pretrained(root / "tokenizer")
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
    )
    CLIPTextModel(config).save_pretrained(root / "text_encoder")


@pytest.mark.slow  # builds and saves a pipeline directory (7 s)
def test_pretrained_class_conditional_dir_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = write_sd_dir(tmp_path / "sd")
    out = d4m(tiny, 2, pretrained=str(root))
    assert out.images.shape == (20, 1, 8, 8) and torch.isfinite(out.images).all()
    assert out.meta["conditioning"] == "class_embedding" and out.meta["model_resolution"] == 16
    assert out.meta["source"] == str(root)


def test_pretrained_text_conditioned_dir_offline(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = write_sd_dir(tmp_path / "sd", text=True, class_embeds=None)
    out = d4m(tiny, 1, pretrained=str(root), prompt="a {}")
    assert out.meta["conditioning"] == "text" and out.images.shape == (10, 1, 8, 8)


def test_text_encoder_without_transformers_is_a_clear_error(tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if not installed: import fails
    root = write_sd_dir(tmp_path / "sd")
    (root / "tokenizer").mkdir()
    (root / "text_encoder").mkdir()
    with pytest.raises(UserError, match="transformers"):
        d4m(tiny, 1, pretrained=str(root))


def test_missing_or_malformed_pretrained_dir(tiny, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        d4m(tiny, 1, pretrained=str(tmp_path / "nowhere"))
    root = write_sd_dir(tmp_path / "sd", class_embeds=5)
    with pytest.raises(UserError, match="class embeddings"):  # 10 classes + null need 11
        d4m(tiny, 1, pretrained=str(root))
    (root / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(UserError, match="scheduler/scheduler_config.json"):
        d4m(tiny, 1, pretrained=str(root))
    bad = write_sd_dir(tmp_path / "bad")
    (bad / "unet" / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="cannot load"):
        d4m(tiny, 1, pretrained=str(bad))
    plain = write_sd_dir(tmp_path / "plain", class_embeds=None)
    with pytest.raises(UserError, match="nothing to condition"):
        d4m(tiny, 1, pretrained=str(plain))
