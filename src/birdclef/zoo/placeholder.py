"""Kind ``placeholder``: a tiny deterministic foundation model, shipped so that every verb that takes a foundation
model can be tried (and tested) without weights, as perch-hoplite's placeholder model.

:class:`PlaceholderModel` has BirdNET's surface (``labels``, ``path``, ``embedding_size``, ``logits(chunks)``,
``infer(chunks) -> (logits, embeddings)``) at any sample rate and window (default BirdNET's: 3 s at 48 kHz).
Each window's features are the shares of its spectral power in ``n_bands`` equal frequency bands (they sum to
1, so loudness does not matter; a tone lands in one band) plus its RMS level; the embedding is a fixed random
projection of those features and the logits a fixed random projection of the embedding. Everything is a pure
function of the audio and the seed: the same window always gets the same numbers, on any machine.

On the command line it stands in for BirdNET's file (``--birdnet --birdnet-model placeholder``); its labels are
then the taxonomy's scientific names, so every class is "known" and scored (by a model that knows nothing).

Example:
    >>> model = PlaceholderModel(["Turdus merula_Blackbird"], embedding_size=16)
    >>> logits, embeddings = model.infer(np.zeros((2, 144_000), np.float32))   # (2, 1), (2, 16)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from birdclef.errors import BirdclefError
from birdclef.zoo.birdnet import build_zero_shot
from birdclef.zoo.registry import BuildContext, Kind, register_kind

PLACEHOLDER = "placeholder"
LICENSE = "MIT (birdclef's own; no weights)"


class PlaceholderModel:
    """A deterministic stand-in for a foundation model (module docstring).

    Args:
        labels: output labels, BirdNET-style ``"Scientific name_Common name"`` (or just scientific names).
        sample_rate: rate (Hz) of the windows it takes.
        window_s: seconds per window.
        embedding_size: D of the embeddings.
        n_bands: frequency bands of the features.
        seed: seed of the fixed projections.
    """

    path = Path(PLACEHOLDER)
    kind = PLACEHOLDER
    licence = LICENSE
    activation = "sigmoid"

    def __init__(self, labels: Sequence[str], sample_rate: int = 48_000, window_s: float = 3.0,
                 embedding_size: int = 32, n_bands: int = 16, seed: int = 0):
        if not labels:
            raise BirdclefError("the placeholder model needs at least one label")
        if sample_rate <= 0 or window_s <= 0 or embedding_size <= 0 or n_bands <= 0:
            raise BirdclefError("the placeholder model needs a positive sample rate, window, embedding size and "
                                "band count")
        self.labels = list(labels)
        self.sample_rate, self.window_s = int(sample_rate), float(window_s)
        self.embedding_size, self.n_bands = int(embedding_size), int(n_bands)
        rng = np.random.default_rng(seed)
        self.projection = rng.standard_normal((n_bands + 1, embedding_size)) / np.sqrt(n_bands + 1)  # (F, D)
        self.weight = rng.standard_normal((embedding_size, len(self.labels))) * 4.0 / np.sqrt(embedding_size)
        self.bias = np.full(len(self.labels), -2.0)

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.sample_rate))

    def features(self, windows: np.ndarray) -> np.ndarray:
        """(N, window samples) -> (N, n_bands + 1) float64: band power shares and the RMS level."""
        windows = np.asarray(windows, dtype=np.float64)
        if windows.ndim != 2 or windows.shape[1] != self.window_samples:
            raise BirdclefError(f"the placeholder model takes (N, {self.window_samples}) windows "
                                f"({self.window_s} s at {self.sample_rate} Hz), got {windows.shape}")
        power = np.abs(np.fft.rfft(windows, axis=1)) ** 2
        bands = np.stack([b.sum(axis=1) for b in np.array_split(power, self.n_bands, axis=1)], axis=1) + 1e-12
        rms = np.sqrt((windows ** 2).mean(axis=1, keepdims=True))
        return np.concatenate([bands / bands.sum(axis=1, keepdims=True), rms], axis=1)

    def infer(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """((N, L) float32 logits, (N, D) float32 embeddings) of (N, window samples) windows."""
        embeddings = self.features(windows) @ self.projection
        logits = embeddings @ self.weight + self.bias
        return logits.astype(np.float32), embeddings.astype(np.float32)

    def logits(self, windows: np.ndarray) -> np.ndarray:
        return self.infer(windows)[0]

    def output_layer(self) -> tuple[np.ndarray, np.ndarray]:
        """Its classifier on its embeddings, ``(weight (L, D), bias (L,))`` float32 (a head's start rows)."""
        return self.weight.T.astype(np.float32), self.bias.astype(np.float32)

    def embeddings(self, windows: np.ndarray) -> np.ndarray:
        return self.infer(windows)[1]


def load_model(source: Path | str | None, ctx: BuildContext) -> PlaceholderModel:
    """A placeholder whose labels are the scientific names of ``ctx.classes`` (all known), or one label
    ``placeholder`` when there are no classes (``embed``: embeddings only)."""
    names = ctx.scientific_names or {}
    labels = [names.get(c, c) for c in ctx.classes] if ctx.classes else [PLACEHOLDER]
    return ctx.shared(PLACEHOLDER, lambda: PlaceholderModel(labels))


KIND = register_kind(Kind(
    name=PLACEHOLDER, summary="tiny deterministic stand-in foundation model: try every verb without weights",
    reads="nothing (labels: the taxonomy's scientific names)", licence=LICENSE,
    verbs=("predict", "analyze", "embed", "pseudo"), build=build_zero_shot(PLACEHOLDER), zero_shot=True,
    load_model=load_model))
