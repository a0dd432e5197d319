"""The resumable ``last/`` checkpoint: model, optimiser and RNG state without pickle.

``last/`` contains the model as a regular checkpoint (``config.json`` + ``model.safetensors``),
``optimizer.safetensors`` (AdamW moments and step counts, the torch RNG states) and
``trainer_state.json`` (position in the run, best metrics, optimiser hyper-parameters). It is
written to ``last.tmp/`` and swapped in by renames, so a crash leaves either the old or the new
state. ``last.old/`` exists only between the two renames and is used when ``last/`` is missing.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from shared.model import PIGModel, save_checkpoint

logger = logging.getLogger(__name__)

OPTIMIZER_FILE = "optimizer.safetensors"
STATE_FILE = "trainer_state.json"
STATE_VERSION = 1


class ResumeError(RuntimeError):
    """A last/ checkpoint that does not fit the current run."""


def save_last(
    run_dir: Path,
    model: PIGModel,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict[str, Any],
    provenance: dict[str, Any],
) -> Path:
    """Write the resumable state of the run to ``run_dir/last`` atomically."""
    run_dir = Path(run_dir)
    target = run_dir / "last"
    staging = run_dir / "last.tmp"
    previous = run_dir / "last.old"
    shutil.rmtree(staging, ignore_errors=True)

    save_checkpoint(model, staging, provenance=provenance)

    tensors: dict[str, torch.Tensor] = {}
    optimizer_state = optimizer.state_dict()
    for param_index, state in optimizer_state["state"].items():
        for key, value in state.items():
            tensors[f"state.{param_index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for device_index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{device_index}"] = cuda_state
    save_file(tensors, str(staging / OPTIMIZER_FILE))

    groups = [{key: value for key, value in group.items()} for group in optimizer_state["param_groups"]]
    state = {"version": STATE_VERSION, "param_groups": groups, **trainer_state}
    (staging / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True))

    # Swap: last -> last.old, last.tmp -> last, then drop last.old.
    shutil.rmtree(previous, ignore_errors=True)
    if target.exists():
        target.rename(previous)
    staging.rename(target)
    shutil.rmtree(previous, ignore_errors=True)
    return target


def find_last(run_dir: Path) -> Path | None:
    """Return the newest complete ``last`` folder of a run, or None."""
    for candidate in (Path(run_dir) / "last", Path(run_dir) / "last.old"):
        if (candidate / STATE_FILE).is_file() and (candidate / OPTIMIZER_FILE).is_file():
            return candidate
    return None


def load_last(
    directory: Path, model: PIGModel, optimizer: torch.optim.Optimizer, config_fingerprint: str
) -> dict[str, Any]:
    """Restore model, optimiser and RNG state from ``directory``; return the trainer state."""
    state = json.loads((directory / STATE_FILE).read_text())
    if state.get("version") != STATE_VERSION:
        raise ResumeError(f"{directory} has state version {state.get('version')!r}, expected {STATE_VERSION}")
    if state.get("config_fingerprint") != config_fingerprint:
        raise ResumeError(
            f"{directory} was written by a run with different model, data or optimiser settings; "
            "use a new output_dir, or pass --resume never to start over in this one"
        )

    weights = load_file(str(directory / "model.safetensors"), device="cpu")
    model.load_state_dict(weights, strict=True)

    tensors = load_file(str(directory / OPTIMIZER_FILE), device="cpu")
    optimizer_state: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in tensors.items():
        if not name.startswith("state."):
            continue
        _, param_index, key = name.split(".", 2)
        optimizer_state.setdefault(int(param_index), {})[key] = tensor
    groups = []
    for group in state["param_groups"]:
        restored = dict(group)
        if "betas" in restored:
            restored["betas"] = tuple(restored["betas"])
        groups.append(restored)
    optimizer.load_state_dict({"state": optimizer_state, "param_groups": groups})

    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[f"rng.cuda.{i}"] for i in range(torch.cuda.device_count()) if f"rng.cuda.{i}" in tensors]
    if cuda_states:
        torch.cuda.set_rng_state_all(cuda_states)
    logger.info("resumed from %s at step %d", directory, state["global_step"])
    return state
