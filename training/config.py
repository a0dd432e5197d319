"""Training configuration: a pydantic model read from YAML or JSON."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from training.datasets import DataSource


class ConfigError(ValueError):
    """A training config that cannot be read or fails validation."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Strict):
    """Backbone and head."""

    model_name: str = "pig-tiny"  # open_clip architecture, e.g. ViT-B-32, or pig-tiny
    # open_clip pretrained tag (e.g. "openai"), a local weights file, or a PIG checkpoint directory
    # whose frame encoder and text tower start the run (the head starts afresh).
    pretrained: str | None = None
    head: Literal["meanp", "pig"] = "pig"  # xpool is an evaluation reference and is not trained on its own
    num_frames: int = Field(12, ge=1)  # T: frames sampled per video
    context_length: int = Field(77, ge=8)  # text positions; captions are truncated to fit
    num_selected_tokens: int = Field(16, ge=1)  # K: patch tokens kept by the informativeness selector
    dropout: float = Field(0.1, ge=0.0, lt=1.0)  # dropout inside the interaction module


class OptimSection(_Strict):
    """Optimiser, schedule and loss weights."""

    epochs: int = Field(5, ge=1)
    max_steps: int | None = Field(None, ge=1)  # stop after this many steps in total, if set
    batch_size: int = Field(32, ge=2)  # per process; the contrastive loss covers batch_size x world size
    lr_clip: float = Field(1e-6, gt=0)  # learning rate of the pretrained CLIP weights
    lr_new: float = Field(1e-4, gt=0)  # learning rate of the new modules and the logit scale
    weight_decay: float = Field(0.2, ge=0)  # AdamW decay on matrices; biases, norms and scales get none
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-6, gt=0)
    warmup_fraction: float = Field(0.01, ge=0, lt=1)  # share of all steps spent in linear warm-up
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of the peak rate
    grad_clip: float | None = Field(1.0, gt=0)  # max gradient norm; None disables clipping
    pseudo_query_weight: float = Field(1.0, ge=0)  # lambda of the pseudo-query regression loss (pig head)
    # Initial inverse temperature exp(logit_scale) of the contrastive loss. None keeps the model's
    # 100, which suits fine-tuning pretrained CLIP; CLIP trained from scratch starts at 1/0.07.
    logit_scale_init: float | None = Field(None, gt=0, le=200)


class RuntimeSection(_Strict):
    """Devices, precision, data loading and determinism."""

    device: str = "auto"  # auto, cpu, cuda or cuda:N; under torchrun each rank uses cuda:LOCAL_RANK
    precision: str = "auto"  # autocast: auto (bf16/fp16 on CUDA, fp32 on the CPU), fp32, bf16, fp16
    grad_checkpointing: bool = False  # recompute transformer blocks in backward to save memory
    num_workers: int = Field(2, ge=0)  # DataLoader decoding processes
    cache_frames: bool = False  # decode each video once into a .npy frame grid in the run dir
    cache_fps: float = Field(8.0, gt=0)  # frame rate of the cached grid
    cache_dir: Path | None = None  # where frame caches live; None: OUTPUT_DIR/frame_cache
    deterministic: bool = True  # torch.use_deterministic_algorithms (warn-only where unsupported)
    torch_threads: int | None = Field(None, ge=1)  # intra-op CPU threads; None keeps torch's default


class ScheduleSection(_Strict):
    """When to evaluate and save."""

    eval_every_epochs: int = Field(1, ge=1)  # evaluate after every N epochs (and at the end)
    eval_every_steps: int | None = Field(None, ge=1)  # also evaluate every N steps, if set
    save_last_every_steps: int = Field(50, ge=1)  # write last/ every N steps and at each epoch end
    eval_batch_size: int = Field(16, ge=1)
    save_dtype: Literal["float32", "float16", "bfloat16"] = "float32"  # storage of best/ weights


class DataSection(_Strict):
    train: DataSource
    val: DataSource | None = None  # evaluated periodically; without it no best/ checkpoint is kept


class TrainConfig(_Strict):
    """Everything a training run needs; the same config and seed give the same weights on a CPU."""

    output_dir: Path  # run folder: best/, last/, frame caches, metrics.jsonl
    seed: int = 0
    model: ModelSection = ModelSection()
    data: DataSection
    optim: OptimSection = OptimSection()
    runtime: RuntimeSection = RuntimeSection()
    schedule: ScheduleSection = ScheduleSection()

    @field_validator("output_dir")
    @classmethod
    def _not_empty(cls, value: Path) -> Path:
        if str(value).strip() in ("", "."):
            raise ValueError("output_dir must name a run folder, e.g. runs/demo")
        return value

    def fingerprint(self) -> str:
        """Return a hash of the settings that change the optimisation path, for resume checks.

        Schedule and runtime options that do not change the weights (worker count, caching) are
        left out, so a resumed run may change them.
        """
        relevant = self.model_dump(mode="json", include={"seed", "model", "data", "optim"})
        return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _apply_override(data: dict[str, Any], override: str) -> None:
    key, separator, raw = override.partition("=")
    if not separator or not key:
        raise ConfigError(f"invalid override {override!r}: expected KEY=VALUE, e.g. optim.epochs=3")
    target = data
    parts = key.split(".")
    for part in parts[:-1]:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"invalid override {override!r}: {part!r} is not a section")
    target[parts[-1]] = yaml.safe_load(raw)


def load_train_config(path: Path | str, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML or JSON training config, apply KEY=VALUE overrides and validate it.

    Relative paths inside the file are taken relative to the current directory, as on the
    command line.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as error:
        raise ConfigError(f"training config {path} not found") from error
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        raise ConfigError(f"training config {path} is not valid {path.suffix.lstrip('.') or 'YAML'}: {error}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"training config {path} must be a mapping at the top level")
    for override in overrides or []:
        _apply_override(data, override)
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"invalid training config {path}:\n{error}") from error
