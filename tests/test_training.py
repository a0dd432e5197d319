"""Training on the synthetic benchmark: loss, determinism, crash resume, quality and checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from shared.model import load_checkpoint
from shared.video import decode_frames, probe, sample_times
from training.cli import main as cli_main
from training.config import ConfigError, TrainConfig, load_train_config
from training.datasets import read_caption_jsonl
from training.evaluate import encode_test_set
from training.synthetic import SyntheticConfig, generate_dataset
from training.train import Trainer, create_model, fit, lr_factor

NUM_TRAIN = 64
NUM_TEST = 24
REFERENCE_STEPS = 8


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic benchmark shared by every test in this file."""
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, SyntheticConfig(num_train=NUM_TRAIN, num_test=NUM_TEST, seed=11), workers=2)
    return out


def make_config(synth_dir: Path, output_dir: Path, **sections) -> dict:
    """A pig-tiny config dictionary for short CPU runs; ``sections`` update its sections."""
    config = {
        "output_dir": str(output_dir),
        "seed": 5,
        "model": {"model_name": "pig-tiny", "head": "pig", "num_frames": 8, "context_length": 24},
        "data": {"train": {"annotations": str(synth_dir / "train.jsonl")}},
        "optim": {
            "epochs": 50,
            "max_steps": REFERENCE_STEPS,
            "batch_size": 16,
            "lr_clip": 1e-3,
            "lr_new": 1e-3,
            "warmup_fraction": 0.1,
        },
        # One frame cache for every run of this file; its folder name includes a key of the data.
        # The thread count is pinned: float sums differ between thread counts, and runs in this
        # process would otherwise take whatever count an earlier test left behind.
        "runtime": {"device": "cpu", "num_workers": 0, "cache_frames": True, "cache_dir": str(synth_dir / "cache"),
                    "torch_threads": 1},
        "schedule": {"save_last_every_steps": 100},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            config.setdefault(section, {}).update(values)
        else:
            config[section] = values
    return config


def load_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_tensors(first: dict[str, torch.Tensor], second: dict[str, torch.Tensor]) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


@pytest.fixture(scope="module")
def reference_run(synth_dir, tmp_path_factory):
    """An uninterrupted run of REFERENCE_STEPS steps without DataLoader workers."""
    output = tmp_path_factory.mktemp("reference")
    result = fit(TrainConfig.model_validate(make_config(synth_dir, output)))
    return output, result


def test_config_loads_yaml_and_overrides(tmp_path, synth_dir):
    path = tmp_path / "run.yaml"
    path.write_text(
        f"output_dir: {tmp_path / 'out'}\n"
        f"data:\n  train:\n    annotations: {synth_dir / 'train.jsonl'}\n"
        "optim:\n  epochs: 3\n"
    )

    config = load_train_config(path, ["optim.batch_size=8", "model.head=meanp"])

    assert config.optim.epochs == 3
    assert config.optim.batch_size == 8
    assert config.model.head == "meanp"
    assert config.optim.betas == (0.9, 0.98)


@pytest.mark.parametrize("name", ["demo.yaml", "msrvtt-9k-vitb32.yaml"])
def test_shipped_configs_validate(name):
    path = Path(__file__).resolve().parent.parent / "training" / "configs" / name

    config = load_train_config(path)

    assert config.model.head == "pig"
    assert config.data.val is not None


def test_config_rejects_unknown_key(tmp_path, synth_dir):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(make_config(synth_dir, tmp_path, optim={"learning_rate": 1.0})))

    with pytest.raises(ConfigError, match="learning_rate"):
        load_train_config(path)


def test_lr_schedule_warmup_then_cosine():
    assert lr_factor(0, 100, 10, 0.0) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10, 0.0) == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, 0.0) == pytest.approx(0.5)
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_logit_scale_init_sets_temperature(tmp_path, synth_dir):
    config = TrainConfig.model_validate(make_config(synth_dir, tmp_path, optim={"logit_scale_init": 1 / 0.07}))

    model = create_model(config, torch.device("cpu"))

    assert model.clamped_logit_scale().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_logit_scale_init_default_keeps_model_value(tmp_path, synth_dir):
    config = TrainConfig.model_validate(make_config(synth_dir, tmp_path))

    model = create_model(config, torch.device("cpu"))

    assert model.clamped_logit_scale().item() == pytest.approx(100.0, rel=1e-5)


def test_few_steps_lower_loss(reference_run):
    _, result = reference_run

    assert len(result.losses) == REFERENCE_STEPS
    assert np.mean(result.losses[-3:]) < 0.7 * np.mean(result.losses[:2])


def test_same_seed_bit_identical(reference_run, synth_dir, tmp_path):
    reference_dir, reference = reference_run
    # Two decoding workers instead of none: items are seeded per (epoch, video), not per worker.
    config = make_config(synth_dir, tmp_path / "again", runtime={"num_workers": 2})

    again = fit(TrainConfig.model_validate(config))

    assert again.losses == reference.losses
    assert_same_tensors(load_tensors(reference_dir / "last"), load_tensors(tmp_path / "again" / "last"))


def test_killed_run_resumes_identically(reference_run, synth_dir, tmp_path):
    reference_dir, _ = reference_run
    output = tmp_path / "killed"
    config = make_config(synth_dir, output, schedule={"save_last_every_steps": 3})
    config_path = tmp_path / "killed.json"
    config_path.write_text(json.dumps(config))

    process = subprocess.Popen(
        [sys.executable, "-m", "training.cli", "fit", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    state_file = output / "last" / "trainer_state.json"
    try:
        while process.poll() is None and not state_file.is_file():
            time.sleep(0.05)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()

    assert process.returncode == -signal.SIGKILL, stderr
    killed_state = json.loads(state_file.read_text())
    assert killed_state["global_step"] < REFERENCE_STEPS
    assert killed_state["batch_in_epoch"] != 0

    resumed = fit(TrainConfig.model_validate(config), resume=True)

    assert resumed.global_step == REFERENCE_STEPS
    assert len(resumed.losses) == REFERENCE_STEPS - killed_state["global_step"]
    assert_same_tensors(load_tensors(reference_dir / "last"), load_tensors(output / "last"))


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    """A short pig training with validation on the synthetic test split, best saved at the end."""
    output = tmp_path_factory.mktemp("trained")
    config = make_config(
        synth_dir,
        output,
        data={
            "train": {"annotations": str(synth_dir / "train.jsonl")},
            "val": {"annotations": str(synth_dir / "test.jsonl")},
        },
        optim={"max_steps": None, "epochs": 30},
        schedule={"eval_every_epochs": 30},
    )
    trainer = Trainer(TrainConfig.model_validate(config))
    result = trainer.run()
    return trainer, result


@pytest.mark.slow
def test_pig_recall_above_chance(trained):
    _, result = trained
    chance = 100.0 / NUM_TEST

    assert result.best_metrics is not None
    assert result.best_metrics["t2v"]["R@1"] >= 3 * chance
    assert result.best_metrics["t2v"]["R@5"] >= 3 * 5 * chance


@pytest.mark.slow
def test_evaluate_prints_three_heads(trained, synth_dir, capsys):
    _, result = trained

    exit_code = cli_main(
        [
            "evaluate", "--checkpoint", str(result.best_dir), "--data", str(synth_dir / "test.jsonl"),
            "--heads", "meanp,pig,xpool", "--dsl", "--cost-videos", "40", "--workers", "0",
        ]
    )
    output = capsys.readouterr().out

    assert exit_code == 0
    for head in ("meanp", "pig", "xpool"):
        assert f"[{head}] query" in output
    assert output.count("ms for 40 videos") == 3
    assert output.count("t2v DSL") == 3
    assert "v2t" in output


@pytest.mark.slow
def test_checkpoint_reproduces_training_vectors(trained, synth_dir):
    trainer, result = trained
    dataset = read_caption_jsonl(synth_dir / "test.jsonl")
    model = trainer.model
    training_vectors = encode_test_set(model, dataset, ["pig"], batch_size=8).video_vectors["pig"]

    loaded = load_checkpoint(result.best_dir, device="cpu")
    frames = []
    for video in dataset.videos:
        info = probe(video.path)
        times = sample_times(0.0, info.duration_s, loaded.config.num_frames)
        frames.append(decode_frames(video.path, times, loaded.config.image_size, info=info))
    indexer_vectors = loaded.embed_videos(np.stack(frames))  # [V, D]

    assert loaded.config.head == "pig"
    assert indexer_vectors.shape == tuple(training_vectors.shape)
    np.testing.assert_allclose(indexer_vectors, training_vectors.numpy(), atol=1e-5)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(synth_dir, tmp_path):
    output = tmp_path / "ddp"
    config = make_config(synth_dir, output, optim={"max_steps": 3, "batch_size": 8})
    config_path = tmp_path / "ddp.json"
    config_path.write_text(json.dumps(config))

    completed = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            "-m", "training.cli", "fit", "--config", str(config_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    state = json.loads((output / "last" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    assert "rank 1 of 2" in completed.stderr


def test_demo_checkpoint_loads():
    demo = Path(__file__).resolve().parent.parent / "checkpoints" / "demo"

    model = load_checkpoint(demo, device="cpu")
    frames = np.zeros((2, model.config.num_frames, model.config.image_size, model.config.image_size, 3), np.uint8)
    vectors = model.embed_videos(frames)

    assert model.config.model_name == "pig-tiny"
    assert model.config.head == "pig"
    assert vectors.shape == (2, model.config.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_synthetic_trail_shows_direction():
    from training.synthetic import _BACKGROUND, COLOURS, DIRECTIONS, plan_dataset, render_clip

    config = SyntheticConfig(num_train=8, num_test=1, seed=3, trail=3, noise_std=0.0)
    plain = SyntheticConfig(num_train=8, num_test=1, seed=3, trail=0, noise_std=0.0)
    spec = next(s for s in plan_dataset(config) if s.split == "train")
    frames, plain_frames = render_clip(config, spec), render_clip(plain, spec)
    first = 0
    for scene in spec.scenes:
        frame = frames[first + scene.num_frames // 2].astype(np.float32)
        plain_frame = plain_frames[first + scene.num_frames // 2].astype(np.float32)
        first += scene.num_frames
        colour = np.array(COLOURS[scene.colour], dtype=np.float32)
        dimmed = np.all(np.abs(frame - (0.5 * colour + 0.5 * _BACKGROUND)) < 12, axis=-1)
        if scene.direction is None:
            assert np.array_equal(frame, plain_frame), "a still object must get no trail"
            continue
        assert dimmed.sum() > 0, f"no trail behind the {scene.direction}-moving {scene.shape}"
        full = np.all(np.abs(frame - colour) < 12, axis=-1)
        dx, dy = DIRECTIONS[scene.direction]
        along = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
        position = dx * along[1] + dy * along[0]  # coordinate along the direction of motion
        assert position[dimmed].mean() < position[full].mean(), "the trail must lie behind the object"


@pytest.mark.parametrize(("pretrained", "expected"), [
    ("not-a-checkpoint", "is a directory but not a PIG checkpoint"),
    ("missing", "not found; pass an existing path, or no weights at all (pig-tiny has no pretrained tags)"),
    ("demo-as-vit", "contains a pig-tiny backbone, not ViT-B-32"),
])
def test_fit_bad_pretrained_is_one_line(tmp_path, synth_dir, pretrained, expected):
    model = {"model_name": "pig-tiny", "head": "pig", "num_frames": 8, "context_length": 24}
    if pretrained == "not-a-checkpoint":
        (tmp_path / pretrained).mkdir()
        model["pretrained"] = str(tmp_path / pretrained)
    elif pretrained == "missing":
        model["pretrained"] = str(tmp_path / pretrained)
    else:
        model.update(model_name="ViT-B-32", pretrained=str(Path(__file__).resolve().parent.parent / "checkpoints" / "demo"))
    config_path = tmp_path / "run.json"
    config_path.write_text(json.dumps(make_config(synth_dir, tmp_path / "run", model=model)))

    result = subprocess.run([sys.executable, "-m", "training.cli", "fit", "--config", str(config_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("pig-train fit: ")]
    assert len(lines) == 1, result.stderr
    assert f"invalid model.pretrained {model['pretrained']!r}" in lines[0]
    assert expected in lines[0]
    assert "Traceback" not in result.stderr
    assert "ModuleNotFoundError" not in result.stderr, "faiss's loader messages must stay quiet"
