"""Tests of the model library: shapes, head contracts, the text tower and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from shared.device import DeviceUnavailableError, autocast, resolve_device, resolve_precision
from shared.model import (
    BackboneUnavailableError,
    CheckpointError,
    QueryDependentHeadError,
    UnknownModelError,
    load_checkpoint,
    load_model,
    model_fingerprint,
    save_checkpoint,
)

QUERIES = ["a red circle moving left", "two people talking in a kitchen at night while it rains outside"]


@pytest.fixture(scope="module")
def pig_model():
    torch.manual_seed(0)
    return load_model(model_name="pig-tiny", head="pig", device="cpu")


def random_frames(batch: int, frames: int, size: int = 32, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(batch, frames, size, size, 3), dtype=np.uint8)


@pytest.mark.parametrize("num_frames", [12, 1])
def test_stage_shapes(pig_model, num_frames):
    model = pig_model
    pixels = model.preprocess_frames(random_frames(3, num_frames))
    assert pixels.shape == (3, num_frames, 3, 32, 32)

    features = model.encode_frames(pixels)
    assert features.frame.shape == (3, num_frames, 64)
    assert features.patch.shape == (3, num_frames, 16, 64)

    pseudo = model.pseudo_query(features)
    assert pseudo.shape == (3, 64)

    video = model.video_from_features(features)
    assert video.shape == (3, 64)
    assert torch.allclose(video.norm(dim=-1), torch.ones(3), atol=1e-5)

    text = model.encode_text(QUERIES).embeddings
    assert text.shape == (2, 64)
    for head in ("meanp", "pig", "xpool"):
        assert model.with_head(head).score(text, features).shape == (2, 3)


def test_single_frame_video_embeds(pig_model):
    vectors = pig_model.embed_videos(random_frames(1, 1)[0])
    assert vectors.shape == (1, 64)
    assert vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]


def test_meanp_is_normalised_frame_mean(pig_model):
    meanp = pig_model.with_head("meanp")
    features = meanp.encode_frames(meanp.preprocess_frames(random_frames(2, 12)))
    expected = F.normalize(features.frame.mean(dim=1), dim=-1)
    assert torch.allclose(meanp.video_from_features(features), expected, atol=1e-6)


def test_pig_video_vector_ignores_query(pig_model):
    model = pig_model.eval()
    with torch.no_grad():
        features = model.encode_frames(model.preprocess_frames(random_frames(2, 12)))
        before = model.video_from_features(features)
        text = model.encode_text(QUERIES).embeddings
        scores_a = model.score(text[:1], features)
        scores_b = model.score(text[1:], features)
        after = model.video_from_features(features)
    assert torch.equal(before, after)
    assert torch.allclose(scores_a, text[:1] @ before.t(), atol=1e-6)
    assert torch.allclose(scores_b, text[1:] @ before.t(), atol=1e-6)


def test_xpool_pooled_vector_depends_on_query(pig_model):
    xpool = pig_model.with_head("xpool").eval()
    with torch.no_grad():
        features = xpool.encode_frames(xpool.preprocess_frames(random_frames(2, 12)))
        text = xpool.encode_text(QUERIES).embeddings
        pooled = xpool.head.interaction.pool_all_pairs(text, torch.cat([features.frame.mean(1, keepdim=True), features.frame], 1))
    assert pooled.shape == (2, 2, 64)
    assert not torch.allclose(pooled[0], pooled[1], atol=1e-4)
    with pytest.raises(QueryDependentHeadError):
        xpool.video_from_features(features)


def full_context_encode(model, texts: list[str]) -> torch.Tensor:
    return model.text_tower.encode_tokens(model.tokenize(texts), trim=False)


@pytest.mark.parametrize("texts", [[QUERIES[0]], QUERIES, ["a", "a dog " * 20, "", "🎬 un chien qui court 東京"]])
def test_trimmed_text_matches_full_context(pig_model, texts):
    with torch.no_grad():
        trimmed = pig_model.encode_text(texts).embeddings
        full = full_context_encode(pig_model, texts)
    assert torch.allclose(trimmed, full, atol=1e-5)


def test_trimmed_text_matches_open_clip(pig_model):
    import open_clip

    tokens = open_clip.get_tokenizer("pig-tiny")([QUERIES[0]])
    with torch.no_grad():
        tower = pig_model.text_tower
        ours = tower.encode(QUERIES[:1]).embeddings
        assert torch.equal(tower.tokenize(QUERIES[:1]).ids, tokens)
        x = tower.token_embedding(tokens) + tower.positional_embedding
        mask = torch.full((77, 77), float("-inf")).triu_(1)
        x = tower.ln_final(tower.transformer(x, attn_mask=mask))
        expected = F.normalize(x[torch.arange(1), tokens.argmax(-1)] @ tower.text_projection, dim=-1)
    assert torch.allclose(ours, expected, atol=1e-5)


def test_truncation_keeps_end_of_text_and_reports(pig_model):
    long_query = " ".join(["word"] * 500)
    batch = pig_model.tokenize([long_query, "short"])
    assert batch.truncated == (True, False)
    assert int(batch.lengths[0]) == 77
    assert int(batch.ids[0, -1]) == pig_model.text_tower.eot_token_id
    assert int(batch.ids[1, int(batch.lengths[1]) - 1]) == pig_model.text_tower.eot_token_id
    assert pig_model.encode_text([long_query]).truncated == (True,)


def test_checkpoint_round_trip_is_bit_exact(pig_model, tmp_path):
    frames = random_frames(2, 12)
    before = pig_model.embed_videos(frames)
    queries_before, _ = pig_model.embed_queries(QUERIES)

    save_checkpoint(pig_model, tmp_path / "ckpt", provenance={"data": "random"})
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")

    assert np.array_equal(loaded.embed_videos(frames), before)
    assert np.array_equal(loaded.embed_queries(QUERIES)[0], queries_before)
    assert model_fingerprint(loaded) == model_fingerprint(pig_model)
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert config["fingerprint"] == model_fingerprint(pig_model)
    assert config["provenance"] == {"data": "random"}
    assert config["model"]["head"] == "pig"


def test_changed_weight_changes_fingerprint(pig_model, tmp_path):
    save_checkpoint(pig_model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    original = model_fingerprint(loaded)
    with torch.no_grad():
        loaded.head.interaction.q_proj.weight[0, 0] += 1e-3
    assert model_fingerprint(loaded) != original


def test_float16_checkpoint_has_stable_fingerprint(pig_model, tmp_path):
    save_checkpoint(pig_model, tmp_path / "half", dtype="float16")
    first = load_checkpoint(tmp_path / "half", device="cpu")
    second = load_checkpoint(tmp_path / "half", device="cpu")
    recorded = json.loads((tmp_path / "half" / "config.json").read_text())["fingerprint"]
    assert model_fingerprint(first) == model_fingerprint(second) == recorded
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 8_000_000


def test_incomplete_checkpoint_rejected(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="incomplete"):
        load_checkpoint(tmp_path / "broken")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing")


def test_pretrained_offline_error_names_ways_out(tmp_path):
    # A subprocess, because huggingface_hub reads HF_HUB_OFFLINE once at import.
    script = (
        "from shared.model import load_model\n"
        "load_model(model_name='ViT-B-32', pretrained='openai', head='meanp', device='cpu', "
        f"cache_dir={str(tmp_path)!r})\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("shared.model.errors.BackboneUnavailableError")
    assert "ViT-B-32" in message
    assert "'openai'" in message
    assert str(tmp_path) in message
    assert "--pretrained /path/to" in message
    assert "pig-tiny" in message


def test_local_weights_file_loads(tmp_path):
    from safetensors.torch import save_file

    from shared.model.backbone import create_backbone

    source = create_backbone("pig-tiny")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(tmp_path / "clip.safetensors"))
    model = load_model(model_name="pig-tiny", pretrained=str(tmp_path / "clip.safetensors"), head="meanp", device="cpu")
    assert torch.equal(model.text_tower.token_embedding.weight, source.token_embedding.weight)
    with pytest.raises(BackboneUnavailableError, match="not found"):
        load_model(model_name="pig-tiny", pretrained=str(tmp_path / "missing.safetensors"), device="cpu")


def test_unknown_names_rejected():
    with pytest.raises(UnknownModelError, match="pig-tiny"):
        load_model(model_name="ViT-Z-99", device="cpu")
    with pytest.raises(UnknownModelError, match="meanp"):
        load_model(model_name="pig-tiny", head="attention", device="cpu")
    with pytest.raises(BackboneUnavailableError, match="known tags"):
        load_model(model_name="ViT-B-32", pretrained="no-such-tag", device="cpu")


def test_device_and_precision_selection():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_precision(torch.device("cpu"), "auto") == torch.float32
    assert resolve_precision(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        resolve_precision(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailableError, match="--device cpu"):
            resolve_device("cuda")


def test_bf16_autocast_on_cpu_stays_close(pig_model):
    frames = random_frames(2, 12)
    reference = pig_model.embed_videos(frames)
    pig_model.precision = "bf16"
    try:
        with autocast(torch.device("cpu"), "bf16"):
            reduced = pig_model.embed_videos(frames)
    finally:
        pig_model.precision = "auto"
    assert reduced.dtype == np.float32
    assert np.abs(reduced - reference).max() < 0.1


def test_quick_gelu_follows_tag_and_checkpoint(tmp_path):
    from open_clip.transformer import QuickGELU

    from shared.model.backbone import tag_uses_quick_gelu

    assert tag_uses_quick_gelu("ViT-B-32", "openai")
    assert not tag_uses_quick_gelu("ViT-B-32", "laion2b_s34b_b79k")
    model = load_model(model_name="pig-tiny", head="meanp", device="cpu")
    model.config = type(model.config)(**{**model.config.__dict__, "quick_gelu": True})
    save_checkpoint(model, tmp_path / "ckpt")
    loaded = load_checkpoint(tmp_path / "ckpt", device="cpu")
    assert loaded.config.quick_gelu
    activations = [m for m in loaded.text_tower.transformer.modules() if isinstance(m, QuickGELU)]
    assert activations


def test_checkpoint_files_readable_by_others(pig_model, tmp_path):
    previous = os.umask(0o022)
    try:
        save_checkpoint(pig_model, tmp_path / "ckpt")
    finally:
        os.umask(previous)
    for name in ("config.json", "model.safetensors"):
        assert (tmp_path / "ckpt" / name).stat().st_mode & 0o777 == 0o644


def test_frame_count_limit_named(tmp_path, pig_model):
    with pytest.raises(ValueError, match="at most 58 frames"):
        load_model(model_name="pig-tiny", head="pig", num_frames=100, device="cpu")
    with pytest.raises(ValueError, match="at least 1"):
        load_model(model_name="pig-tiny", head="meanp", num_frames=0, device="cpu")
    assert load_model(model_name="pig-tiny", head="meanp", num_frames=100, device="cpu").config.num_frames == 100
    save_checkpoint(pig_model, tmp_path / "ckpt")
    with pytest.raises(ValueError, match="--frames 58 or fewer"):
        load_model(checkpoint=str(tmp_path / "ckpt"), num_frames=59, device="cpu")
    assert load_model(checkpoint=str(tmp_path / "ckpt"), num_frames=58, device="cpu").config.num_frames == 58


def test_checkpoint_backbone_starts_new_head(tmp_path):
    torch.manual_seed(1)
    source = load_model(model_name="pig-tiny", head="meanp", device="cpu")
    with torch.no_grad():
        for parameter in source.parameters():
            parameter.add_(0.01)  # unlike any fresh random initialisation
    save_checkpoint(source, tmp_path / "meanp")

    model = load_model(model_name="pig-tiny", pretrained=str(tmp_path / "meanp"), head="pig", device="cpu")
    source_state = source.state_dict()
    backbone_keys = [k for k in model.state_dict() if k.startswith(("frame_encoder.", "text_tower."))]
    assert backbone_keys
    for key in backbone_keys:
        assert torch.equal(model.state_dict()[key], source_state[key]), key
    generator = model.head.generator
    assert torch.equal(generator.transformer.resblocks[0].mlp.c_fc.weight,
                       source.text_tower.transformer.resblocks[0].mlp.c_fc.weight)
    assert model.config.pretrained == str(tmp_path / "meanp")


def test_checkpoint_backbone_of_other_model_rejected(tmp_path, pig_model):
    save_checkpoint(pig_model, tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="contains a pig-tiny backbone, not ViT-B-32"):
        load_model(model_name="ViT-B-32", pretrained=str(tmp_path / "ckpt"), device="cpu")
