"""The torch module that is exported: front end(s), every fold, every run, in one graph.

``FusedEnsemble`` takes a batch of waveform windows (B, samples) and returns (B, R, K)
fold-averaged sigmoid probabilities, one slice per run (model) of a blend, classes in the first
run's order. Per-model post-processing and the weighted blend stay in numpy
(:func:`birdclef.infer.ensemble.combine_runs`), so they are shared with the torch path.

``ExportLogMel`` is the export-friendly twin of :class:`~birdclef.features.mel.LogMel`:
``torch.stft`` / ``torch.fft.rfft`` and complex tensors do not survive ONNX export everywhere (the
TorchScript exporter has no ``fft_rfft``; OpenVINO crashes on the dynamo exporter's ``DFT``), so
the STFT is computed with plain MatMuls. A dense DFT matrix would cost ~0.6 GFLOP per 5 s window
(n_fft 1024) -- half of an EfficientNet-B0 -- so it is factorised once, Cooley-Tukey style
(N = N1 x N2: an N2-point DFT, a twiddle product, an N1-point DFT), which cuts the work ~5x and
keeps float32 accuracy at FFT level (``tests/unit/test_export.py`` checks it against LogMel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdclef.config import FrontendConfig
from birdclef.features.filterbank import mel_filterbank
from birdclef.features.mel import band_blocks
from birdclef.export.runtime import FRONTEND_SCOPE as NODE_PREFIX
from birdclef.models import BirdClassifier

FRONTEND_SCOPE = "frontends"
"""Attribute name of the front ends in :class:`FusedEnsemble`; exported node names start with
``/frontends.`` (:data:`birdclef.export.runtime.FRONTEND_SCOPE`), so runtimes can keep that subgraph
in float32 under a bf16 precision hint and quantizers can leave it alone."""
assert NODE_PREFIX == f"/{FRONTEND_SCOPE}.", "runtime and graph disagree on the front-end scope"

_AMIN = 1e-10
_RANGE_EPS = 1e-6
"""Same constants as :mod:`birdclef.features.mel` (power floor, smallest dB range in min-max)."""


def split_fft_size(n_fft: int) -> tuple[int, int]:
    """(N1, N2) with N1 * N2 = n_fft and N2 the smallest divisor >= sqrt(n_fft) (N1 = 1 for primes)."""
    n2 = next(d for d in range(math.isqrt(n_fft), n_fft + 1) if n_fft % d == 0 and d * d >= n_fft)
    return n_fft // n2, n2


def _stage_matrices(n_fft: int, bin_lo: int, bin_hi: int) -> dict[str, np.ndarray]:
    """Constant matrices of the factorised real DFT (float64; cast by the caller).

    With n = n1 + N1 n2 and k = k2 + N2 k1:
    ``X[k] = sum_n1 W_N^(n1 k2) W_N1^(n1 k1) sum_n2 x[n] W_N2^(n2 k2)`` (W_M = exp(-2 pi i / M)).
    Only the k1 that hold bins in [bin_lo, bin_hi) are computed.
    """
    n1_size, n2_size = split_fft_size(n_fft)
    n1, n2 = np.arange(n1_size), np.arange(n2_size)
    k1 = np.arange(bin_lo // n2_size, (bin_hi - 1) // n2_size + 1)
    stage1 = 2 * np.pi * np.outer(n2, n2) / n2_size  # (k2, n2)
    twiddle = 2 * np.pi * np.outer(n2, n1) / n_fft  # (k2, n1)
    stage2 = 2 * np.pi * np.outer(n1, k1) / n1_size  # (n1, k1)
    cos2, sin2 = np.cos(stage2), np.sin(stage2)
    return {
        "stage1_re": np.cos(stage1), "stage1_im": -np.sin(stage1),  # (N2, N2)
        "twiddle_re": np.cos(twiddle), "twiddle_im": -np.sin(twiddle),  # (N2, N1)
        "stage2": np.block([[cos2, -sin2], [sin2, cos2]]),  # (2 N1, 2 K1): [Zr | Zi] -> [Xr | Xi]
        "k1": k1,
    }



class ExportLogMel(nn.Module):
    """LogMel for a fixed input length, built from ops every ONNX runtime has (Slice, MatMul, ...).

    Same output as :class:`~birdclef.features.mel.LogMel` (centred periodic-Hann STFT with zero
    padding, ``|X| ** power``, mel filters, ``power_to_db`` against each example's peak, min-max to
    [0, 1], optional bilinear resize) to float32 rounding; the batch axis stays dynamic.

    Frames are cut by reshaping the padded wave into hop-long chunks and concatenating shifted
    chunk views when ``n_fft`` is a multiple of ``hop_length`` (both presets), else by a Gather
    (slower in ONNX Runtime). The spectrum is two small MatMul stages (see module docstring); for
    power 2 the squared real and imaginary parts meet a row-duplicated filterbank, so no slicing
    of the complex parts is needed.

    Args:
        cfg: the front-end config of the model(s) it feeds.
        num_samples: T, the (fixed) length of the waveform windows.

    Example:
        >>> frontend = ExportLogMel(FrontendConfig(n_mels=64), num_samples=160_000)
        >>> frontend(torch.zeros(2, 160_000)).shape
        torch.Size([2, 1, 64, 313])
    """

    def __init__(self, cfg: FrontendConfig, num_samples: int):
        super().__init__()
        self.cfg, self.num_samples = cfg, num_samples
        self.n1, self.n2 = split_fft_size(cfg.n_fft)
        self.frames = 1 + num_samples // cfg.hop_length
        fbank = mel_filterbank(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.f_min, cfg.f_max, htk=cfg.htk, norm=cfg.norm)
        used = fbank.any(axis=0).nonzero()[0]
        mats = _stage_matrices(cfg.n_fft, int(used[0]), int(used[-1]) + 1)
        self.k1 = len(mats["k1"])
        for name in ("stage1_re", "stage1_im", "twiddle_re", "twiddle_im", "stage2"):
            self.register_buffer(name, torch.from_numpy(mats[name].astype(np.float32)), persistent=False)
        first_bin = int(mats["k1"][0]) * self.n2  # the flattened (k1, k2) spectrum starts at this bin
        fbank_t = np.zeros((self.k1 * self.n2, cfg.n_mels), dtype=np.float32)  # (spectrum bins, n_mels)
        stop = min(len(fbank_t), fbank.shape[1] - first_bin)
        fbank_t[:stop] = fbank.T[first_bin : first_bin + stop]
        self.blocks = band_blocks(fbank_t)
        for i, (m0, m1, r0, r1) in enumerate(self.blocks):
            self.register_buffer(f"fbank_block{i}", torch.from_numpy(np.ascontiguousarray(fbank_t[r0:r1, m0:m1])),
                                 persistent=False)
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(cfg.n_fft) / cfg.n_fft)  # periodic Hann
        self.register_buffer("window", torch.from_numpy(hann.astype(np.float32)), persistent=False)
        self.by_chunks = cfg.n_fft % cfg.hop_length == 0
        if not self.by_chunks:
            index = np.arange(self.frames)[:, None] * cfg.hop_length + np.arange(cfg.n_fft)[None, :]
            self.register_buffer("frame_index", torch.from_numpy(index), persistent=False)

    def cut_frames(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_fft) centred, zero-padded, windowed frames."""
        pad, hop = self.cfg.n_fft // 2, self.cfg.hop_length
        padded = F.pad(wave, (pad, pad))
        if not self.by_chunks:
            return padded[:, self.frame_index] * self.window
        shifts = self.cfg.n_fft // hop
        chunks = padded[:, : (self.frames + shifts - 1) * hop].reshape(-1, self.frames + shifts - 1, hop)
        frames = torch.cat([chunks[:, i : i + self.frames] for i in range(shifts)], dim=-1)
        return frames * self.window

    def power_spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, K1 * N2) ``|X| ** power`` of bins ``K1[0] * N2`` onwards, in bin order."""
        frames = self.cut_frames(wave).reshape(-1, self.frames, self.n2, self.n1)  # [n2, n1]: x[n1 + N1 n2]
        y_re, y_im = self.stage1_re @ frames, self.stage1_im @ frames  # (B, frames, N2, N1): [k2, n1]
        z_re = y_re * self.twiddle_re - y_im * self.twiddle_im
        z_im = y_re * self.twiddle_im + y_im * self.twiddle_re
        spec = torch.cat([z_re, z_im], dim=-1) @ self.stage2  # (B, frames, N2, 2 K1): [k2, (re|im, k1)]
        spec = spec * spec
        power = spec[..., : self.k1] + spec[..., self.k1 :]  # (B, frames, N2, K1) = |X|^2
        power = power.transpose(2, 3).reshape(-1, self.frames, self.k1 * self.n2)  # bin k = k2 + N2 k1
        return power if self.cfg.power == 2.0 else power.pow(self.cfg.power / 2.0)

    def mel_power(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, frames, n_mels) mel power (before the log), banded filterbank product."""
        power = self.power_spectrum(wave)
        parts = [power[..., r0:r1] @ getattr(self, f"fbank_block{i}") for i, (_, _, r0, r1) in enumerate(self.blocks)]
        return torch.cat(parts, dim=-1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) float32 -> (B, 1, n_mels, frames), or (B, 1, S, S) with ``image_size`` S."""
        level = 10.0 * torch.log10(self.mel_power(wave).clamp_min(_AMIN)).transpose(1, 2)  # (B, n_mels, frames)
        peak = level.amax(dim=(1, 2), keepdim=True)
        if self.cfg.top_db is not None:
            level = torch.maximum(level, peak - self.cfg.top_db)
        image = (level - peak).unsqueeze(1)  # (B, 1, n_mels, frames), dB re. each example's peak
        if self.cfg.normalize:
            low = image.amin(dim=(1, 2, 3), keepdim=True)
            image = (image - low) / (image.amax(dim=(1, 2, 3), keepdim=True) - low).clamp_min(_RANGE_EPS)
        if self.cfg.image_size:
            size = (self.cfg.image_size, self.cfg.image_size)
            image = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        return image


@dataclass
class RunSpec:
    """One run (model) of the blend as the fused graph sees it.

    Attributes:
        models: its folds, in eval mode.
        window_samples: the run's context window in samples (centred on each 5 s row).
        class_order: indices that put its class columns in the blend's order; None when equal.
    """

    models: list[BirdClassifier]
    window_samples: int
    class_order: list[int] | None = None


class FusedEnsemble(nn.Module):
    """(B, T) waveform windows -> (B, R, K) fold-averaged probabilities of each of R runs.

    T is the widest run's window; a run with a shorter window sees its centred crop, the same
    samples as :func:`birdclef.infer.base.context_windows` would give it. The mel image is computed
    once per distinct (front-end config, window) pair and shared by the folds that use it.

    Args:
        runs: the runs of the blend, in blend-weight order.
        row_samples: samples of one scored row (5 s at the runs' sample rate).
    """

    def __init__(self, runs: list[RunSpec], row_samples: int):
        super().__init__()
        self.row_samples = row_samples
        self.num_samples = max(run.window_samples for run in runs)
        keys: list[tuple[FrontendConfig, int]] = []
        fronts = []
        self.fold_frontend: list[list[int]] = []
        for run in runs:
            indices = []
            for model in run.models:
                birdnet = getattr(model, "is_birdnet", False)  # BirdNET's own front end exports as it is
                key = (("birdnet", model.cfg.birdnet_path) if birdnet else model.cfg.frontend, run.window_samples)
                if key not in keys:
                    keys.append(key)
                    fronts.append(model.frontend if birdnet else ExportLogMel(key[0], key[1]))
                indices.append(keys.index(key))
            self.fold_frontend.append(indices)
        self.crops = [self._crop(length) for _, length in keys]
        setattr(self, FRONTEND_SCOPE, nn.ModuleList(fronts))
        self.runs = nn.ModuleList(nn.ModuleList(run.models) for run in runs)
        for r, run in enumerate(runs):
            order = run.class_order or list(range(run.models[0].num_classes))
            self.register_buffer(f"order{r}", torch.tensor(order, dtype=torch.long), persistent=False)

    def _crop(self, length: int) -> tuple[int, int]:
        """(start, stop) of a `length`-sample window inside the widest one, both centred on the row
        with :func:`~birdclef.infer.base.context_windows`' integer margins."""
        start = (self.num_samples - self.row_samples) // 2 - (length - self.row_samples) // 2
        return start, start + length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) float32 -> (B, R, K) probabilities in [0, 1]."""
        fronts = getattr(self, FRONTEND_SCOPE)
        mels = [front(wave[:, a:b]) for front, (a, b) in zip(fronts, self.crops)]  # each (B, 1, F, T')
        per_run = []
        for r, folds in enumerate(self.runs):
            probs = [torch.sigmoid(m.forward_head(m.forward_backbone(mels[i]))["clip_logits"])
                     for m, i in zip(folds, self.fold_frontend[r])]  # each (B, K_r)
            mean = torch.stack(probs, dim=0).mean(dim=0)
            per_run.append(mean.index_select(1, getattr(self, f"order{r}")))
        return torch.stack(per_run, dim=1)  # (B, R, K)
