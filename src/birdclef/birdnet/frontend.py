"""BirdNET v2.4's in-graph front end in torch: 48 kHz waveform -> the ``[B, 96, T, 2]`` spectrogram its CNN reads.

What the TFLite graph does (ops 0-92 of the v2.4 file), reproduced here with the constants read from the
file's own buffers (Hann windows, mel matrices, learned exponents, frame lengths and hops):

1. per-example min-max normalisation of the whole input to [-1, 1] (``(x - min) / (max + 1e-6)``,
   then ``(. - 0.5) * 2``);
2. two STFT branches, n_fft 2048 / hop 278 and n_fft 1024 / hop 280, framed without padding;
3. the *real part* of the RFFT of each Hann-windowed frame (TF's ``Cast complex -> float``), not its magnitude;
4. a 96-band mel projection, then ``(m * m) ** p`` with a learned exponent per branch;
5. the mel axis flipped (high frequencies first), both branches stacked on a last axis.

Because only the real part is kept and the mel projection is linear, steps 2-4's linear part is one
matrix per branch: ``mel(real(rfft(frame * hann))) = frame @ M`` with ``M = diag(hann) @ C @ mel.T``,
``C[n, k] = cos(2 pi n k / n_fft)``. ``M`` is computed once in float64 and stored float32, and the
framing + product is a single strided ``conv1d`` (kernel n_fft, stride hop, 96 output channels): no
FFT, so the module exports to ONNX with the TorchScript exporter.

Any input of at least one 2048-sample frame works (BirdNET's own 3 s chunks, or 5 s training windows).
For other lengths than 3 s the two branches give slightly different frame counts (5 s: 856 and 854);
both are cut to the shorter one, as BirdNET's two branches also drift apart by 2 samples per frame.

Example:
    >>> front = BirdnetFrontend.from_file(bundled_model_path())
    >>> front(torch.zeros(2, 144_000)).shape
    torch.Size([2, 96, 511, 2])
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from birdclef.birdnet.torch_net import GraphConstants
from birdclef.errors import BirdclefError

BRANCHES = ("model/MEL_SPEC1", "model/MEL_SPEC2")
"""Name scopes of the two STFT branches in the v2.4 graph, in stacking order."""
EPS_TENSOR = "model/MEL_SPEC1/add/y"
"""The normalisation's epsilon (1e-6), shared by both branches."""


def projection(hann: np.ndarray, mel: np.ndarray) -> np.ndarray:
    """``diag(hann) @ C @ mel.T`` in float64 -> (n_fft, n_mels) float32; ``C`` the real-DFT cosine basis."""
    n_fft = len(hann)
    n = np.arange(n_fft, dtype=np.float64)[:, None]
    k = np.arange(mel.shape[1], dtype=np.float64)[None, :]
    cos = np.cos(2.0 * np.pi * ((n * k) % n_fft) / n_fft)  # (n_fft, n_fft//2+1); the modulo keeps the angle exact
    return (hann.astype(np.float64)[:, None] * (cos @ mel.astype(np.float64).T)).astype(np.float32)


class BirdnetFrontend(nn.Module):
    """(B, L) 48 kHz waveform -> (B, 96, T, 2) BirdNET spectrogram (NHWC: mel band, frame, branch).

    Args:
        kernels: per branch the (n_fft, 96) projection (see :func:`projection`).
        hops: per branch the frame step in samples.
        exponents: per branch the learned exponent ``p`` of ``(m * m) ** p``.
        eps: the normalisation's epsilon.

    The constants are buffers, not parameters: the front end is fixed (BirdNET trained it, and the
    waveform needs no gradient), so fine-tuning changes only the CNN and the head.
    """

    def __init__(self, kernels: list[np.ndarray], hops: list[int], exponents: list[float], eps: float):
        super().__init__()
        self.hops = [int(h) for h in hops]
        self.exponents = [float(p) for p in exponents]
        self.eps = float(eps)
        self.n_ffts = [int(k.shape[0]) for k in kernels]
        for i, kernel in enumerate(kernels):  # conv1d weight (96, 1, n_fft)
            # not persistent: the file's constants, rebuilt from it; a checkpoint need not carry them
            self.register_buffer(f"kernel{i}", torch.from_numpy(np.ascontiguousarray(kernel.T))[:, None, :],
                                 persistent=False)

    @classmethod
    def from_file(cls, path: str | Path, graph=None) -> BirdnetFrontend:
        """The front end of a BirdNET v2.4 ``.tflite`` (`graph`: its already parsed ``ModelT``).

        Raises:
            BirdclefError: the file lacks one of the front end's named constants (not a v2.4 model).
        """
        consts = GraphConstants(Path(path), graph)
        kernels, hops, exponents = [], [], []
        for scope in BRANCHES:
            hann = consts.by_name(f"{scope}/stft/hann_window/sub_2")
            mel = consts.by_name(f"{scope}/Tensordot/MatMul")
            n_fft = int(consts.by_name(f"{scope}/stft/frame_length"))
            if hann.shape != (n_fft,) or mel.ndim != 2 or mel.shape[1] != n_fft // 2 + 1:
                raise BirdclefError(f"{path}: {scope}'s window {hann.shape} / mel matrix {mel.shape} do not fit "
                                    f"n_fft {n_fft}; not a BirdNET v2.4 model")
            kernels.append(projection(hann, mel))
            hops.append(int(consts.by_name(f"{scope}/stft/frame_step")))
            exponents.append(float(consts.by_name(f"{scope}/truediv_1")))
        return cls(kernels, hops, exponents, float(consts.by_name(EPS_TENSOR)))

    def min_samples(self) -> int:
        """The shortest input: one frame of the widest branch."""
        return max(self.n_ffts)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, L) float32 -> (B, 96, T, 2) with T = the shorter branch's frame count."""
        if wave.dim() != 2 or wave.shape[1] < self.min_samples():
            raise ValueError(f"BirdNET's front end needs (batch, samples >= {self.min_samples()}) audio, "
                             f"got {tuple(wave.shape)}")
        # float32 even under autocast: a bf16 2048-tap projection, then x ** 0.23, would lose the quiet bins
        with torch.autocast(device_type=wave.device.type, enabled=False):
            x = wave.float()
            x = x - x.amin(dim=1, keepdim=True)
            x = (x / (x.amax(dim=1, keepdim=True) + self.eps) - 0.5) * 2.0
            x = x[:, None, :]  # (B, 1, L)
            specs = []
            for i, (hop, p) in enumerate(zip(self.hops, self.exponents)):
                m = nn.functional.conv1d(x, getattr(self, f"kernel{i}"), stride=hop)  # (B, 96, T_i)
                specs.append(torch.pow(m * m, p).flip(1))
        frames = min(s.shape[-1] for s in specs)
        return torch.stack([s[..., :frames] for s in specs], dim=-1)  # (B, 96, T, 2)
