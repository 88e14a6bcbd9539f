"""The one place that names accelerators: resolve ``--device auto|cpu|cuda[:N]`` and pick autocast.

Everything else in the package takes a :class:`torch.device` from :func:`resolve_device` and wraps
forward passes in :func:`autocast_for`, so training and inference keep one code path on CPU and GPU
(nanoGPT's ``nullcontext`` idea).

Example:
    >>> device = resolve_device("cpu")
    >>> with autocast_for(device):
    ...     y = torch.ones(2, 2) @ torch.ones(2, 2)
    >>> y.dtype
    torch.float32
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch

from birdclef.errors import BirdclefError

_ALIASES = {"gpu": "cuda"}
"""Lightning's accelerator name for CUDA devices, accepted so one flag value works everywhere."""


class DeviceUnavailableError(BirdclefError, RuntimeError):
    """A device was requested that this machine does not have."""


def resolve_device(requested: str = "auto") -> torch.device:
    """Turn a device request into a :class:`torch.device` that exists on this machine.

    Args:
        requested: ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``
            or ``"gpu"`` (an alias of ``"cuda"``).

    Returns:
        The device to put models and batches on.

    Raises:
        DeviceUnavailableError: CUDA (or CUDA device N) was requested but is not available; the
            message says to use ``--device cpu``.
        ValueError: `requested` is not a device string torch understands.
    """
    requested = _ALIASES.get(requested.strip().lower(), requested.strip().lower())
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"--device {requested} was requested but CUDA is not available on this machine; "
                "use --device cpu (or --device auto)")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise DeviceUnavailableError(
                f"--device {requested} was requested but only {count} CUDA device(s) exist; "
                f"use an index below {count} or --device cpu")
    return device


def autocast_for(device: torch.device, enabled: bool = True,
                 dtype: torch.dtype | None = None) -> AbstractContextManager:
    """Mixed precision on GPU, a no-op on CPU.

    Args:
        device: where the forward pass runs.
        enabled: False gives a no-op everywhere (full float32).
        dtype: autocast dtype on CUDA; None picks bfloat16 where the GPU supports it natively and
            float16 otherwise (e.g. T4). float16 training needs a gradient scaler; Lightning's
            ``16-mixed`` precision provides one.

    Returns:
        ``torch.autocast`` on CUDA, else ``contextlib.nullcontext()``.
    """
    if not enabled or device.type != "cuda":
        return nullcontext()
    if dtype is None:
        native_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = torch.bfloat16 if native_bf16 else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)

