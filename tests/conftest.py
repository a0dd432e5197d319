"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.model import load_model, save_checkpoint


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two pig-tiny checkpoints with different random weights, such as an old and a new model."""
    root = tmp_path_factory.mktemp("checkpoints")
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = load_model(model_name="pig-tiny", head="pig", device="cpu")
        paths.append(save_checkpoint(model, root / f"seed{seed}"))
    return paths[0], paths[1]
