"""Log-mel front end as a torch module: waveform batch in, [0, 1] mel image out.

Pure torch (no torchaudio), device-agnostic (the window and filterbank are buffers that move with
``.to(device)``), batched and differentiable. Before scaling it reproduces
``librosa.power_to_db(librosa.feature.melspectrogram(...), ref=np.max, top_db=80)`` to a relative
error far below 1e-3 (``tests/unit/test_mel.py``), then applies the reference's per-example
min-max scaling and optional resize (DESIGN §3).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdclef.config import FrontendConfig
from birdclef.features.filterbank import mel_filterbank, mel_frequencies

AMIN = 1e-10
"""Power floor before the log (librosa's ``amin``): silence maps to -100 dB, not -inf."""

_RANGE_EPS = 1e-6
"""Smallest dB range divided by in min-max scaling; a constant image (silence) scales to zeros."""

_MEL_BLOCK = 16
"""Mel bands per block of the banded filterbank product (see :func:`band_blocks`)."""

_CPU_CHUNK_BYTES = 4 * 2**20
"""On CPU, examples go through the spectrum in groups whose power spectrogram takes about this
many bytes, so the large intermediates stay in cache: 2-3x faster than the whole 12 x 5 s batch
at once on a 2-core machine (``benchmarks/bench_frontend.py``). Other devices take the batch whole."""


def band_blocks(fbank_t: np.ndarray, block: int = _MEL_BLOCK) -> tuple[tuple[int, int, int, int], ...]:
    """Split the (rows, n_mels) filterbank into column blocks with the row span of their non-zeros.

    Mel filters are triangles, so each FFT bin feeds at most two bands and the dense product does
    mostly multiply-by-zero: for the v3 preset (512 mels) blocks of 16 bands cut the work ~15x.

    Returns:
        (mel_lo, mel_hi, row_lo, row_hi) per block; an all-zero block keeps one (zero) row.
    """
    blocks = []
    for mel_lo in range(0, fbank_t.shape[1], block):
        mel_hi = min(mel_lo + block, fbank_t.shape[1])
        rows = fbank_t[:, mel_lo:mel_hi].any(axis=1).nonzero()[0]
        row_lo, row_hi = (int(rows[0]), int(rows[-1]) + 1) if len(rows) else (0, 1)
        blocks.append((mel_lo, mel_hi, row_lo, row_hi))
    return tuple(blocks)


class LogMel(nn.Module):
    """(B, T) waveform -> (B, 1, n_mels, frames) log-mel image, per-example scaled to [0, 1].

    Steps: centred STFT with a periodic Hann window and zero padding (librosa >= 0.10's
    ``pad_mode="constant"``), ``|X| ** power``, mel filters from
    :func:`~birdclef.features.filterbank.mel_filterbank`, ``power_to_db`` with each example's
    maximum as reference, ``amin`` 1e-10 and a ``top_db`` floor below each example's peak; then,
    per the config, min-max scaling to [0, 1] and a bilinear resize to ``image_size`` squared.

    Speed (CPU, ``benchmarks/bench_frontend.py``): frames are cut with ``unfold`` and sent to one
    batched ``rfft`` (no transposed complex copy as in ``torch.stft``); for power 2 the squared
    real and imaginary parts meet a row-duplicated filterbank, so ``re² + im²`` is never formed
    (a strided pass that costs more than the extra multiply-adds); the filterbank product is
    banded (:func:`band_blocks`) and only spans the bins in [f_min, f_max]; on CPU the batch goes
    through in cache-sized groups of examples.

    ONNX: export needs ``torch.fft.rfft`` support (opset 17 DFT); an exporter without it can swap
    :meth:`spectrum` for a conv1d with a Fourier basis. All later ops are real-valued and plain.

    Example:
        >>> frontend = LogMel.from_preset("baseline")
        >>> frontend(torch.zeros(2, 160_000)).shape
        torch.Size([2, 1, 128, 313])
    """

    def __init__(self, cfg: FrontendConfig | None = None):
        super().__init__()
        self.cfg = cfg or FrontendConfig()
        c = self.cfg
        self.register_buffer("window", torch.hann_window(c.n_fft, periodic=True), persistent=False)
        fbank = mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, htk=c.htk, norm=c.norm)
        used = fbank.any(axis=0).nonzero()[0]  # FFT bins inside [f_min, f_max]
        self.bin_lo, self.bin_hi = int(used[0]), int(used[-1]) + 1
        fbank_t = fbank[:, self.bin_lo : self.bin_hi].T  # (used_bins, n_mels)
        if c.power == 2.0:
            fbank_t = np.repeat(fbank_t, 2, axis=0)  # rows re_0, im_0, re_1, ... : (2 * used_bins, n_mels)
        self.blocks = band_blocks(fbank_t)
        self.register_buffer("fbank_t", torch.from_numpy(np.ascontiguousarray(fbank_t)), persistent=False)

    @classmethod
    def from_preset(cls, name: str, **overrides: object) -> LogMel:
        """A LogMel for a DESIGN §3 preset (``baseline`` or ``v3``) with optional field overrides.

        Example:
            >>> LogMel.from_preset("v3", image_size=256)(torch.zeros(1, 160_000)).shape
            torch.Size([1, 1, 256, 256])
        """
        return cls(replace(FrontendConfig.preset(name), **overrides))

    def num_frames(self, num_samples: int) -> int:
        """STFT frames of a `num_samples`-long wave (centred frames): ``1 + num_samples // hop_length``."""
        return 1 + num_samples // self.cfg.hop_length

    def spectrum(self, wave: torch.Tensor) -> torch.Tensor:
        """Centred, zero-padded, Hann-windowed STFT over the bins in [f_min, f_max].

        Args:
            wave: (B, T) float32 waveform.

        Returns:
            (B, frames, used_bins) complex64, time-major (``torch.stft`` is frequency-major).
        """
        pad = self.cfg.n_fft // 2
        frames = F.pad(wave, (pad, pad)).unfold(-1, self.cfg.n_fft, self.cfg.hop_length)  # (B, frames, n_fft)
        return torch.fft.rfft(frames * self.window, dim=-1)[..., self.bin_lo : self.bin_hi]

    def mel_power(self, wave: torch.Tensor) -> torch.Tensor:
        """Mel power spectrogram (before the log).

        Args:
            wave: (B, T) float32 waveform.

        Returns:
            (B, n_mels, frames) float32.
        """
        spec = self.spectrum(wave)
        if self.cfg.power == 2.0:
            power = torch.view_as_real(spec).square().flatten(-2)  # (B, frames, 2 * used_bins)
        else:
            power = spec.abs().pow(self.cfg.power)  # (B, frames, used_bins)
        power_ft = power.transpose(1, 2)  # (B, rows, frames), a view: BLAS reads it transposed
        parts = [self.fbank_t[r0:r1, m0:m1].T @ power_ft[:, r0:r1] for m0, m1, r0, r1 in self.blocks]
        return torch.cat(parts, dim=1)  # (B, n_mels, frames)

    def to_db(self, mel_power: torch.Tensor) -> torch.Tensor:
        """``librosa.power_to_db(ref=np.max, amin=1e-10, top_db)`` applied to each example.

        Args:
            mel_power: (B, ...) non-negative power.

        Returns:
            Same shape, dB relative to each example's peak: 0 at the peak, floored at ``-top_db``.
        """
        dims = tuple(range(1, mel_power.dim()))
        level = 10.0 * torch.log10(mel_power.clamp_min(AMIN))
        peak = level.amax(dim=dims, keepdim=True)  # = 10 log10(max(amin, ref)) with ref = max power
        if self.cfg.top_db is not None:
            level = torch.maximum(level, peak - self.cfg.top_db)
        return level - peak

    def _cpu_chunk(self, num_samples: int) -> int:
        """Examples per group on CPU (see ``_CPU_CHUNK_BYTES``)."""
        example_bytes = self.num_frames(num_samples) * self.fbank_t.shape[0] * 4  # float32 power rows
        return max(1, _CPU_CHUNK_BYTES // example_bytes)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """Waveform batch to mel image.

        Args:
            wave: (B, T) float waveform at ``cfg.sample_rate`` (any float dtype; computed in float32).

        Returns:
            (B, 1, n_mels, frames) float32 with frames = ``num_frames(T)``, or
            (B, 1, image_size, image_size) when ``cfg.image_size`` is set. Values are dB relative to
            each example's peak (in [-top_db, 0]) or, with ``cfg.normalize``, in [0, 1]; an
            all-zero wave gives all zeros.

        Raises:
            ValueError: `wave` is not 2-D.
        """
        if wave.dim() != 2:
            raise ValueError(f"LogMel expects a (batch, samples) waveform, got shape {tuple(wave.shape)}; "
                             "use wave.unsqueeze(0) for a single clip")
        wave = wave.float()
        if wave.device.type == "cpu":
            power = torch.cat([self.mel_power(part) for part in wave.split(self._cpu_chunk(wave.shape[1]))])
        else:
            power = self.mel_power(wave)
        mel = self.to_db(power).unsqueeze(1)  # (B, 1, n_mels, frames)
        if self.cfg.normalize:
            mel = minmax_scale(mel)
        if self.cfg.image_size:
            size = (self.cfg.image_size, self.cfg.image_size)
            mel = F.interpolate(mel, size=size, mode="bilinear", align_corners=False)
        return mel

    def extra_repr(self) -> str:
        c = self.cfg
        return (f"sample_rate={c.sample_rate}, n_fft={c.n_fft}, hop_length={c.hop_length}, n_mels={c.n_mels}, "
                f"f_min={c.f_min}, f_max={c.f_max}, htk={c.htk}, power={c.power}, top_db={c.top_db}, "
                f"normalize={c.normalize}, image_size={c.image_size}")


def minmax_scale(x: torch.Tensor) -> torch.Tensor:
    """Scale each example (dim 0) of `x` to [0, 1]; a constant example becomes all zeros.

    Args:
        x: (B, ...) float tensor.

    Returns:
        Same shape, ``(x - min) / (max - min)`` per example, finite for constant input.
    """
    dims = tuple(range(1, x.dim()))
    low = x.amin(dim=dims, keepdim=True)
    return (x - low) / (x.amax(dim=dims, keepdim=True) - low).clamp_min(_RANGE_EPS)


def mel_bin_of(freq_hz: float, cfg: FrontendConfig) -> int:
    """Index of the mel band whose centre frequency (Hz) is nearest `freq_hz` under `cfg`."""
    centres = mel_frequencies(cfg.n_mels + 2, cfg.f_min, cfg.f_max, cfg.htk)[1:-1]  # (n_mels,) Hz
    return int(np.abs(centres - freq_hz).argmin())
