"""The training loop: contrastive video-text training of a PIG model, resumable and seeded.

Loss (per step, over the batch gathered from every rank):

    L = (CE(s * T V^T, I) + CE(s * V T^T, I)) / 2  +  lambda * mean(2 - 2 <t_p, t>)

with V the video vectors [B, D], T the caption embeddings [B, D], s = exp(logit_scale) clamped at
200, and t_p the pig head's pseudo-query; the second term applies to the pig head only. The
regression target t is detached, so the pseudo-query follows the text tower and never pulls it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shared.device import autocast, resolve_device, resolve_precision
from shared.model import FrameFeatures, HeadOptions, PIGModel, TokenBatch, build_model, save_checkpoint
from shared.model.errors import BackboneUnavailableError, CheckpointError, UnknownModelError
from training.config import ConfigError, TrainConfig
from training.data import EpochSampler, FrameCache, TrainClips, collate_train, seed_worker
from training.datasets import CaptionDataset
from training.distributed import DistributedContext, barrier, gather_with_local_grad, init_distributed, shutdown
from training.evaluate import evaluate_model
from training.state import find_last, load_last, save_last

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FitResult:
    """Outcome of a training run."""

    global_step: int  # optimiser steps taken in total, resumed ones included
    losses: list[float]  # loss of every step this process ran, in order
    best_metrics: dict[str, dict[str, float]] | None  # validation metrics of best/, None without validation
    best_step: int | None  # step at which best/ was saved
    best_dir: Path | None  # best checkpoint folder
    last_dir: Path  # resumable state folder


class TrainingForward(nn.Module):
    """The part of a training step that DistributedDataParallel wraps: frames and tokens in,
    video, caption and pseudo-query embeddings out."""

    def __init__(self, model: PIGModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, pixels: torch.Tensor, token_ids: torch.Tensor, token_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        features: FrameFeatures = self.model.encode_frames(pixels)
        video = self.model.video_from_features(features)  # [B, D]
        tokens = TokenBatch(ids=token_ids, lengths=token_lengths, truncated=())
        text = self.model.encode_tokens(tokens)  # [B, D]
        pseudo = self.model.pseudo_query(features) if self.model.config.head == "pig" else None  # [B, D]
        return video, text, pseudo


def contrastive_loss(video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over matching rows of video [B, D] and text [B, D]."""
    logits = logit_scale * text.float() @ video.float().t()  # [B, B]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def pseudo_query_loss(pseudo: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """mean(2 - 2 <t_p, t>): squared distance of normalised vectors; the target is detached."""
    return (2.0 - 2.0 * (pseudo.float() * text.detach().float()).sum(dim=-1)).mean()


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: PIGModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with four groups: CLIP and new weights, each with and without weight decay.

    Matrices (ndim >= 2) decay; biases, LayerNorm gains, embeddings vectors and the logit scale
    do not, as in CLIP's recipe.
    """
    groups = []
    for name, parameters in model.parameter_groups().items():
        lr = config.optim.lr_clip if name == "clip" else config.optim.lr_new
        decay = [p for p in parameters if p.ndim >= 2]
        no_decay = [p for p in parameters if p.ndim < 2]
        groups.append({"name": f"{name}_decay", "params": decay, "lr": lr, "initial_lr": lr, "weight_decay": config.optim.weight_decay})
        groups.append({"name": f"{name}_no_decay", "params": no_decay, "lr": lr, "initial_lr": lr, "weight_decay": 0.0})
    groups = [group for group in groups if group["params"]]
    return torch.optim.AdamW(groups, betas=tuple(config.optim.betas), eps=config.optim.eps)


def set_determinism(config: TrainConfig) -> None:
    """Seed every generator and ask torch for deterministic kernels."""
    random.seed(config.seed)
    np.random.seed(config.seed % 2**32)
    torch.manual_seed(config.seed)
    if config.runtime.torch_threads is not None:
        torch.set_num_threads(config.runtime.torch_threads)
    if config.runtime.deterministic:
        # warn_only: kernels without a deterministic version warn instead of raising (some CUDA ops).
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def enable_grad_checkpointing(model: nn.Module) -> int:
    """Turn on open_clip's per-block activation checkpointing; returns how many transformers."""
    count = 0
    for module in model.modules():
        if hasattr(module, "grad_checkpointing") and hasattr(module, "resblocks"):
            module.grad_checkpointing = True
            count += 1
    return count


def create_model(config: TrainConfig, device: torch.device) -> PIGModel:
    """Build the model from an open_clip name and an optional pretrained tag or weights file."""
    try:
        model = build_model(
            config.model.model_name,
            pretrained=config.model.pretrained,
            head=config.model.head,
            num_frames=config.model.num_frames,
            head_options=HeadOptions(num_selected_tokens=config.model.num_selected_tokens, dropout=config.model.dropout),
            context_length=config.model.context_length,
            precision=config.runtime.precision,
        )
    except (BackboneUnavailableError, CheckpointError) as error:
        raise ConfigError(f"invalid model.pretrained {config.model.pretrained!r}: {error}") from error
    except UnknownModelError as error:
        raise ConfigError(f"invalid model section: {error}") from error
    if config.optim.logit_scale_init is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(config.optim.logit_scale_init))
    return model.to(device)


def _data_summary(name: str, dataset: CaptionDataset, source: Any) -> dict[str, Any]:
    return {
        "split": name,
        "dataset": dataset.name,
        "videos": len(dataset),
        "captions": sum(len(video.captions) for video in dataset.videos),
        "source": source.model_dump(mode="json"),
    }


class Trainer:
    """Runs one training job; see ``fit``."""

    def __init__(self, config: TrainConfig, resume: bool = True) -> None:
        self.config = config
        self.resume = resume
        self.run_dir = Path(config.output_dir)
        preferred = resolve_device(config.runtime.device)
        self.context: DistributedContext = init_distributed(preferred.type)
        if preferred.type == "cuda" and self.context.enabled:
            preferred = torch.device("cuda", self.context.local_rank)
            torch.cuda.set_device(preferred)
        self.device = preferred
        self.precision_dtype = resolve_precision(self.device, config.runtime.precision)

    def _log_jsonl(self, record: dict[str, Any]) -> None:
        if self.context.is_main:
            with (self.run_dir / "metrics.jsonl").open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")

    def _load_data(self) -> tuple[CaptionDataset, CaptionDataset | None, FrameCache | None, FrameCache | None]:
        config = self.config
        train_set = config.data.train.load()
        val_set = config.data.val.load() if config.data.val is not None else None
        train_cache = val_cache = None
        if config.runtime.cache_frames:
            size = self.model.config.image_size
            cache_root = config.runtime.cache_dir or self.run_dir / "frame_cache"
            fps, workers = config.runtime.cache_fps, config.runtime.num_workers
            # Rank 0 decodes, the others wait and then open the same files.
            if self.context.is_main:
                FrameCache.build(cache_root, "train", train_set, size, fps, workers)
                if val_set is not None:
                    FrameCache.build(cache_root, "val", val_set, size, fps, workers)
            barrier(self.context)
            train_cache = FrameCache.build(cache_root, "train", train_set, size, fps, workers)
            if val_set is not None:
                val_cache = FrameCache.build(cache_root, "val", val_set, size, fps, workers)
        return train_set, val_set, train_cache, val_cache

    def run(self) -> FitResult:
        config = self.config
        set_determinism(config)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if self.context.is_main:
            (self.run_dir / "config.json").write_text(config.model_dump_json(indent=2))

        self.model = create_model(config, self.device)
        if config.runtime.grad_checkpointing:
            logger.info("gradient checkpointing on in %d transformers", enable_grad_checkpointing(self.model))
        train_set, val_set, train_cache, val_cache = self._load_data()
        optimizer = build_optimizer(self.model, config)

        sampler = EpochSampler(len(train_set), config.seed, config.optim.batch_size, self.context.rank, self.context.world_size)
        batches_per_epoch = sampler.batches_per_epoch()
        if batches_per_epoch == 0:
            raise ValueError(
                f"the training split has {len(train_set)} videos, fewer than one batch of {config.optim.batch_size} "
                f"per process; lower optim.batch_size"
            )
        total_steps = config.optim.epochs * batches_per_epoch
        if config.optim.max_steps is not None:
            total_steps = min(total_steps, config.optim.max_steps)
        warmup_steps = int(round(config.optim.warmup_fraction * total_steps))

        trainer_state: dict[str, Any] = {
            "config_fingerprint": config.fingerprint(),
            "epoch": 0,
            "batch_in_epoch": 0,
            "global_step": 0,
            "best_r1": None,
            "best_step": None,
            "best_metrics": None,
        }
        last = find_last(self.run_dir) if self.resume else None
        if last is not None:
            trainer_state.update(load_last(last, self.model, optimizer, config.fingerprint()))

        forward: nn.Module = TrainingForward(self.model)
        if self.context.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            forward = nn.parallel.DistributedDataParallel(forward, device_ids=device_ids)
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision_dtype == torch.float16)
        clips = TrainClips(train_set, self.model.config.num_frames, self.model.config.image_size, config.seed, train_cache)
        loader_generator = torch.Generator()
        loader_generator.manual_seed(config.seed)
        loader = DataLoader(
            clips,
            batch_size=config.optim.batch_size,
            sampler=sampler,
            num_workers=config.runtime.num_workers,
            collate_fn=collate_train,
            worker_init_fn=seed_worker,
            generator=loader_generator,
            drop_last=True,
            persistent_workers=False,
        )
        provenance_data = {"train": _data_summary("train", train_set, config.data.train)}
        if val_set is not None:
            provenance_data["val"] = _data_summary("val", val_set, config.data.val)

        losses: list[float] = []
        global_step = int(trainer_state["global_step"])
        start_epoch = int(trainer_state["epoch"])
        start_batch = int(trainer_state["batch_in_epoch"])
        self.model.train()
        started = time.perf_counter()

        def save_state(epoch: int, batch_in_epoch: int) -> None:
            if batch_in_epoch >= batches_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            trainer_state.update(epoch=epoch, batch_in_epoch=batch_in_epoch, global_step=global_step)
            if self.context.is_main:
                save_last(self.run_dir, self.model, optimizer, trainer_state, {"training_data": provenance_data, "config": config.model_dump(mode="json")})
            barrier(self.context)

        def maybe_evaluate(epoch: int) -> None:
            if val_set is None:
                return
            if self.context.is_main:
                results = evaluate_model(
                    self.model, val_set, [config.model.head], batch_size=config.schedule.eval_batch_size,
                    num_workers=config.runtime.num_workers, cache=val_cache,
                )
                metrics = results[0].report.as_dict()
                r1 = metrics["t2v"]["R@1"]
                logger.info("step %d: validation t2v R@1 %.2f R@5 %.2f MdR %.1f", global_step, r1, metrics["t2v"]["R@5"], metrics["t2v"]["MdR"])
                self._log_jsonl({"step": global_step, "epoch": epoch, "eval": metrics})
                if trainer_state["best_r1"] is None or r1 > trainer_state["best_r1"]:
                    trainer_state.update(best_r1=r1, best_step=global_step, best_metrics=metrics)
                    save_checkpoint(
                        self.model,
                        self.run_dir / "best",
                        provenance={
                            "training_data": provenance_data,
                            "metrics": metrics,
                            "step": global_step,
                            "epoch": epoch,
                            "config": config.model_dump(mode="json"),
                        },
                        dtype=config.schedule.save_dtype,
                    )
            barrier(self.context)

        finished = global_step >= total_steps
        for epoch in range(start_epoch, config.optim.epochs):
            if finished:
                break
            sampler.set_epoch(epoch, start_batch if epoch == start_epoch else 0)
            batch_in_epoch = start_batch if epoch == start_epoch else 0
            for batch in loader:
                factor = lr_factor(global_step, total_steps, warmup_steps, config.optim.min_lr_ratio)
                for group in optimizer.param_groups:
                    group["lr"] = group["initial_lr"] * factor

                loss, parts = self._step(forward, batch, optimizer, scaler)
                losses.append(loss)
                global_step += 1
                batch_in_epoch += 1
                if global_step % 10 == 0 or global_step == 1:
                    logger.info(
                        "epoch %d step %d/%d loss %.4f (contrastive %.4f, pseudo-query %.4f) lr factor %.3f, %.1f s",
                        epoch, global_step, total_steps, loss, parts[0], parts[1], factor, time.perf_counter() - started,
                    )
                    self._log_jsonl({"step": global_step, "epoch": epoch, "loss": loss, "contrastive": parts[0], "pseudo_query": parts[1]})

                finished = global_step >= total_steps
                if global_step % config.schedule.save_last_every_steps == 0 and not finished:
                    save_state(epoch, batch_in_epoch)
                every = config.schedule.eval_every_steps
                if every is not None and global_step % every == 0 and not finished:
                    maybe_evaluate(epoch)
                if finished:
                    break

            end_of_epoch = batch_in_epoch >= batches_per_epoch
            if finished or (end_of_epoch and (epoch + 1) % config.schedule.eval_every_epochs == 0):
                maybe_evaluate(epoch)
            save_state(epoch, batch_in_epoch)

        result = FitResult(
            global_step=global_step,
            losses=losses,
            best_metrics=trainer_state["best_metrics"],
            best_step=trainer_state["best_step"],
            best_dir=self.run_dir / "best" if trainer_state["best_metrics"] is not None else None,
            last_dir=self.run_dir / "last",
        )
        shutdown(self.context)
        return result

    def _step(
        self, forward: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
    ) -> tuple[float, tuple[float, float]]:
        config = self.config
        pixels = self.model.preprocess_frames(batch.frames)  # [B, T, 3, S, S]
        tokens = self.model.tokenize(batch.captions)
        with autocast(self.device, config.runtime.precision):
            video, text, pseudo = forward(pixels, tokens.ids.to(self.device), tokens.lengths.to(self.device))

        all_video = gather_with_local_grad(video.float(), self.context)  # [world * B, D]
        all_text = gather_with_local_grad(text.float(), self.context)  # [world * B, D]
        # Every rank computes the loss over the whole gathered batch but back-propagates only
        # through its own shard. Scaling by the world size makes DDP's gradient average equal
        # the gradient of the single-process loss over the global batch.
        contrastive = contrastive_loss(all_video, all_text, self.model.clamped_logit_scale())
        loss = contrastive * self.context.world_size
        regression = torch.zeros((), device=self.device)
        if pseudo is not None and config.optim.pseudo_query_weight > 0:
            regression = pseudo_query_loss(pseudo, text)
            loss = loss + config.optim.pseudo_query_weight * regression

        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if config.optim.grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.optim.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        reported = contrastive.item() + config.optim.pseudo_query_weight * regression.item()
        return reported, (contrastive.item(), regression.item())


def fit(config: TrainConfig, resume: bool = True) -> FitResult:
    """Train a model as ``config`` describes; continue from ``output_dir/last`` when ``resume``.

    Writes ``best/`` (by validation text-to-video R@1, a regular checkpoint), ``last/`` (the
    resumable state) and ``metrics.jsonl`` into ``output_dir``.
    """
    return Trainer(config, resume=resume).run()
