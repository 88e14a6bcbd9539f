"""Device resolution and the autocast switch (CUDA presence is mocked; a real-GPU test is marked gpu)."""

from __future__ import annotations

from contextlib import nullcontext

import pytest
import torch

from birdclef.errors import BirdclefError
from birdclef.utils.device import DeviceUnavailableError, autocast_for, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_auto_is_cpu_without_cuda(no_cuda):
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")


def test_auto_is_cuda_when_available(two_gpus):
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("GPU").type == "cuda"
    assert resolve_device("cuda:1") == torch.device("cuda", 1)


def test_cuda_without_cuda_says_how_to_fix(no_cuda):
    with pytest.raises(DeviceUnavailableError, match="--device cpu") as info:
        resolve_device("cuda")
    assert isinstance(info.value, BirdclefError) and isinstance(info.value, RuntimeError)


def test_cuda_index_beyond_device_count(two_gpus):
    with pytest.raises(DeviceUnavailableError, match="only 2 CUDA device"):
        resolve_device("cuda:2")


def test_bad_device_string():
    with pytest.raises(RuntimeError):
        resolve_device("toaster")


def test_autocast_is_a_noop_on_cpu():
    ctx = autocast_for(torch.device("cpu"))
    assert isinstance(ctx, nullcontext)
    with ctx:
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_autocast_on_cuda_picks_bf16_or_fp16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    ctx = autocast_for(torch.device("cuda"))
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    assert autocast_for(torch.device("cuda")).fast_dtype == torch.float16
    assert isinstance(autocast_for(torch.device("cuda"), enabled=False), nullcontext)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_autocast_runs_matmul_in_reduced_precision_on_gpu():
    device = resolve_device("auto")
    x = torch.ones(4, 4, device=device)
    with autocast_for(device):
        y = x @ x
    assert y.dtype in (torch.bfloat16, torch.float16)
