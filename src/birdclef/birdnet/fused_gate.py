"""The parity gate of the fused BirdNET graph: does it score as LiteRT does, here, with this runtime?

:func:`gate_chunks` makes :data:`GATE_CHUNKS` deterministic synthetic chunks (tones, sweeps, click trains and
noise at several levels; no real audio needed, so the gate works on any machine); :func:`litert_reference`
scores them with LiteRT once per ai-edge-litert version (cached beside the export); :func:`check_gate` compares
the fused graph's scores with :func:`~birdclef.export.parity.compare_scores`, the export's own parity verdict, by
:data:`TOLERANCES`, and the embeddings by :data:`EMBEDDING_TOLERANCE`.

Example:
    >>> gate = check_gate(litert_reference(path, gate_chunks(), folder), fused_model.infer(gate_chunks()))
    >>> gate.passed, gate.summary()
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from birdclef.birdnet.model import CHUNK_S, CHUNK_SAMPLES, SAMPLE_RATE, BirdnetModel
from birdclef.errors import BirdclefError
from birdclef.export.parity import TOLERANCES, ParityResult, Tolerance, compare_scores

GATE_CHUNKS = 12
"""Synthetic chunks the parity gate scores on every load (~0.1 s on the fused graph)."""
TOLERANCES = {"fp32": TOLERANCES["fp32"], "bf16": Tolerance(auc=0.005, prob=5e-2, prob_always=True),
              "int8": TOLERANCES["int8"]}
"""fp32: the export's own fp32 rule, max |dsigmoid| <= 1e-4 on the gate chunks (measured 2e-6, ONNX Runtime and
OpenVINO alike): it catches a wrong graph or runtime, with a 50x margin. On real soundscapes the largest
differences are bigger and come from the front end's ``(m * m) ** p`` on quiet bands, where float rounding of
the mel projection is amplified: over the 360 rows (1,080 chunks) of multitaxa-dev-v1's test soundscapes max
|dprob| was 4e-5 (ONNX Runtime) and 2.6e-4 (OpenVINO, whose Pow is less exact), torch itself 3e-5 on the worst
chunks, and the macro ROC-AUC was the same to 4 decimals. bf16 (OpenVINO on a CPU with AMX or AVX512-BF16, front end kept
float32) moves single probabilities by ~1e-2, so it is judged on ranking: |dAUC| <= 0.005 with pseudo-labels
(each class's top LiteRT chunk as its positive), the rule ``birdclef export`` applies to int8, and max
|dsigmoid| <= 0.05 to catch a broken graph. int8 (``benchmarks/bench_birdnet_runtime.py`` only: it needs
calibration audio) is the export's int8 rule: that |dAUC| alone, as quantization moves single probabilities by
a few per cent."""
EMBEDDING_TOLERANCE = 1e-4
"""fp32: largest max |dembedding| relative to the largest |embedding| of LiteRT (heads read embeddings, not
sigmoids). Measured 2e-6 on the gate chunks; up to 4.6e-4 on real soundscapes (the front end, as above)."""

class ParityGateError(BirdclefError):
    """The fused graph does not score the gate chunks as LiteRT does (``result`` holds the numbers)."""

    def __init__(self, message: str, result: GateResult):
        super().__init__(message)
        self.result = result


def gate_chunks(n: int = GATE_CHUNKS, seed: int = 0) -> np.ndarray:
    """(n, 144000) float32 deterministic synthetic chunks: tones, sweeps, click trains and noise at several levels.

    Varied enough that thousands of BirdNET's classes take different scores on them, so a ranking can be
    compared; no real audio is needed (the gate must work on any machine).
    """
    rng = np.random.default_rng(seed)
    t = np.arange(CHUNK_SAMPLES) / SAMPLE_RATE
    chunks = []
    for i in range(n):
        f0, f1 = 500.0 * 1.35 ** (i % 12), 500.0 * 1.35 ** ((i * 5 + 3) % 12)
        sweep = np.sin(2 * np.pi * (f0 * t + (f1 - f0) * t * t / (2 * CHUNK_S)))
        pulses = 0.5 * (1 + np.sign(np.sin(2 * np.pi * (1.5 + i % 5) * t)))  # 1.5-5.5 calls per second
        level = 10.0 ** (-(i % 4) / 2)
        chunk = level * 0.3 * sweep * (pulses if i % 3 else 1.0) + rng.normal(0.0, 0.02 * (1 + i % 3), CHUNK_SAMPLES)
        chunks.append(chunk)
    return np.stack(chunks).astype(np.float32)


def litert_reference(model_path: Path, chunks: np.ndarray, folder: Path | None = None, litert: type = BirdnetModel,
                     threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LiteRT's (logits, embeddings) of `chunks`, cached in `folder` (the fused export's) per ai-edge-litert version
    and chunk contents when `litert` is :class:`BirdnetModel` itself (any other loader is run every time)."""
    cached = litert is BirdnetModel and folder is not None
    digest = hashlib.blake2b(np.ascontiguousarray(chunks).tobytes(), digest_size=8).hexdigest()
    file = Path(folder or ".") / f"gate-litert-{_litert_version()}-{digest}.npz"
    if cached and file.is_file():
        with np.load(file) as saved:
            return saved["logits"], saved["embeddings"]
    logits, embeddings = litert(model_path, threads, len(chunks)).infer(chunks)
    if cached:
        file.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=file.parent, suffix=".npz", delete=False) as tmp:
            np.savez(tmp, logits=logits, embeddings=embeddings)
        os.replace(tmp.name, file)
    return logits, embeddings


def _litert_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ai-edge-litert")
    except PackageNotFoundError:
        return "unknown"


@dataclass
class GateResult:
    """The parity gate's verdict on one fused runtime."""

    parity: ParityResult
    """max |dsigmoid|, pseudo-label macro-AUC and rank correlation of the gate chunks, LiteRT vs fused."""
    embedding_diff: float
    """max |dembedding| / max |embedding| (LiteRT)."""
    embedding_tolerance: float | None
    """Limit of `embedding_diff` (None: not gated, bf16)."""

    def failures(self) -> list[str]:
        failed = self.parity.failures()
        if self.embedding_tolerance is not None and self.embedding_diff > self.embedding_tolerance:
            failed.append(f"max|dembedding| / max|embedding| {self.embedding_diff:.1e} > {self.embedding_tolerance:g}")
        return failed

    @property
    def passed(self) -> bool:
        return not self.failures()

    def summary(self) -> str:
        p = self.parity
        verdict = f"FAILED ({', '.join(self.failures())})" if self.failures() else "ok"
        auc = "" if p.auc_torch is None else f", pseudo-label macro-AUC d {p.auc_diff:+.5f}"
        return (f"gate on {p.n_rows} synthetic chunks vs LiteRT: max|dsigmoid| {p.max_abs_diff:.1e}, "
                f"embeddings {self.embedding_diff:.1e} (relative){auc}, rank corr {p.rank_correlation:.6f} "
                f"-> {verdict}")


def check_gate(reference: tuple[np.ndarray, np.ndarray], fused: tuple[np.ndarray, np.ndarray],
               precision: str = "fp32") -> GateResult:
    """Compare fused (logits, embeddings) of the gate chunks with LiteRT's (`reference`), by :data:`TOLERANCES`."""
    ref_probs, fused_probs = expit(reference[0].astype(np.float64)), expit(fused[0].astype(np.float64))
    parity = compare_scores([f"{len(ref_probs)} synthetic gate chunks"], ref_probs[:, None], fused_probs[:, None],
                            ref_probs, fused_probs, TOLERANCES[precision])
    scale = max(float(np.abs(reference[1]).max()), 1e-12)
    diff = float(np.abs(reference[1].astype(np.float64) - fused[1]).max()) / scale
    return GateResult(parity, diff, EMBEDDING_TOLERANCE if precision == "fp32" else None)
