"""Device and mixed-precision selection shared by the indexer, the search service and training."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

logger = logging.getLogger(__name__)

DEVICE_CHOICES = ("auto", "cuda", "cpu")
PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")


class DeviceUnavailableError(RuntimeError):
    """Raised when a device is requested that this machine does not have."""


def resolve_device(preference: str = "auto") -> torch.device:
    """Turn a device preference ("auto", "cuda", "cuda:N" or "cpu") into a torch device.

    "auto" picks the first CUDA device when one is visible and the CPU otherwise.
    """
    preference = (preference or "auto").strip().lower()
    if preference == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if preference == "cpu":
        return torch.device("cpu")
    if preference == "cuda" or preference.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device {preference!r} was requested but no CUDA device is visible; "
                "use --device cpu (or PIG_DEVICE=cpu), or run on a host with an NVIDIA GPU and driver"
            )
        return torch.device(preference)
    raise ValueError(f"invalid device {preference!r}: expected one of auto, cuda, cuda:N, cpu")


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """Return the autocast dtype for a device: bf16 or fp16 on CUDA, fp32 on the CPU by default."""
    precision = (precision or "auto").strip().lower()
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"invalid precision {precision!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    if precision == "fp32":
        return torch.float32
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("precision 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


@contextlib.contextmanager
def autocast(device: torch.device, precision: str = "auto") -> Iterator[None]:
    """Run the enclosed block under autocast when the resolved precision is below fp32."""
    dtype = resolve_precision(device, precision)
    if dtype == torch.float32:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
