"""Run an exported model folder with ONNX Runtime or OpenVINO: numpy only, no torch, no timm.

A model folder (written by :func:`birdclef.export.export.export_model`) holds one graph --
``model.onnx`` or ``model.xml`` + ``model.bin`` -- taking (B, samples) waveform windows and
returning (B, R, K) fold-averaged probabilities of its R runs, plus ``metadata.json`` (classes,
sample rate, window, blend weights, post-processing config, parity results).
:class:`ExportedPredictor` follows :class:`~birdclef.infer.base.Predictor`, so the resumable batch
job (:func:`birdclef.infer.job.predict_to_csv`) runs it exactly as it runs torch checkpoints.

Example:
    >>> predictor = ExportedPredictor("models/baseline-onnx", backend="onnx", threads=4)
    >>> predict_to_csv("test_soundscapes", predictor, Path("submission.csv"))
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from birdclef.config import InferConfig, config_from_dict, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.infer.base import SinglePart, span
from birdclef.infer.ensemble import normalise_weights

KIND = "exported"
"""The model kind a model folder's metadata.json records (``"kind"``); folders exported before have none."""

METADATA = "metadata.json"
GRAPH_FILES = {"onnx": "model.onnx", "openvino": "model.xml"}
"""The graph file of each export format."""
BACKENDS = ("onnx", "openvino")
"""Runtimes an exported model can run on (an ONNX file also runs on OpenVINO)."""
PIP_PACKAGES = {"onnx": "onnxruntime", "openvino": "openvino"}
_MODULES = {"onnx": "onnxruntime", "openvino": "openvino"}
_OV_PRECISION = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}
STATIC_SHAPES = 4
"""Batch lengths an :class:`OpenVinoGraph` with ``static`` compiles its own graph for (a file's full batches and
a few tail lengths); other lengths run on the dynamic graph."""
FRONTEND_SCOPE = "/frontends."
"""Exported node names of the front ends start with this (the attribute name in ``FusedEnsemble``)."""


class BackendUnavailableError(BirdclefError):
    """The runtime a backend needs is not installed (or has no wheel for this platform)."""


def import_backend(backend: str) -> ModuleType:
    """Import the runtime of `backend` ('onnx' -> onnxruntime, 'openvino' -> openvino).

    Raises:
        BirdclefError: unknown backend name.
        BackendUnavailableError: the package is not installed; the message names the pip package.
    """
    if backend not in _MODULES:
        raise BirdclefError(f"unknown backend {backend!r}; choose from {list(BACKENDS)}")
    try:
        return importlib.import_module(_MODULES[backend])
    except ImportError as exc:
        raise BackendUnavailableError(
            f"backend {backend!r} needs the {PIP_PACKAGES[backend]!r} package, which is not installed "
            f"or has no wheel for this platform ({exc}); pip install {PIP_PACKAGES[backend]}") from None


def available_backends() -> list[str]:
    """The backends whose runtime imports on this machine."""
    found = []
    for backend in BACKENDS:
        try:
            import_backend(backend)
        except BackendUnavailableError:
            continue
        found.append(backend)
    return found


def cpu_supports_bf16() -> bool:
    """Whether OpenVINO reports native bf16 support on this CPU (False without OpenVINO).

    Native is not fast: bf16 beats fp32 where the CPU has AMX tiles or fast AVX512-BF16 units
    (1.6-1.8x for 5 folds on this project's AMD EPYC, README), but a bf16 matmul ran at half the
    fp32 speed on an Intel Xeon with AVX512-BF16 and no AMX. Only a timing tells (``birdclef export`` and ``birdclef plan``
    measure it).
    """
    try:
        ov = import_backend("openvino")
    except BackendUnavailableError:
        return False
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    """The parsed ``metadata.json`` of an exported model folder.

    Raises:
        BirdclefError: the folder, its metadata or its graph file is missing or unreadable.
    """
    model_dir = Path(model_dir)
    path = model_dir / METADATA
    if not path.is_file():
        raise BirdclefError(f"{model_dir}: not an exported model folder (no {METADATA}); "
                            "make one with `birdclef export`")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BirdclefError(f"{path}: unreadable model metadata ({exc})") from None
    missing = [k for k in ("format", "precision", "classes", "sample_rate", "input_window_s", "weights") if k not in meta]
    if missing:
        raise BirdclefError(f"{path}: metadata lacks {missing}; re-export the model")
    graph = model_dir / GRAPH_FILES.get(meta["format"], "?")
    if not graph.is_file():
        raise BirdclefError(f"{model_dir}: graph file {graph.name} of format {meta['format']!r} is missing")
    return meta


def source_runs(model_dir: str | Path) -> tuple[list[Path], list[float]]:
    """The run folders (or best.pt files) and blend weights a model folder was exported from.

    For ``predict --model DIR --backend torch``: ``TorchPredictor(*source_runs(DIR), config, device)``
    scores the same blend with the original checkpoints.

    Raises:
        BirdclefError: not a model folder, or a recorded run no longer exists.
    """
    meta = read_metadata(model_dir)
    runs = [Path(run["path"]) for run in meta.get("runs", [])]
    missing = [str(r) for r in runs if not r.exists()]
    if not runs or missing:
        raise BirdclefError(f"{model_dir}: the runs it was exported from are not available here ({missing or 'none recorded'}); "
                            "use --backend onnx or openvino")
    return runs, list(meta["weights"])


class OnnxRuntimeGraph:
    """An ONNX file on ONNX Runtime's CPU provider: ``graph(wave)`` -> (B, R, K) probabilities.

    Args:
        path: the .onnx file.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
    """

    def __init__(self, path: Path, threads: int | None = None):
        ort = import_backend("onnx")
        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = threads
        # Idle worker threads would otherwise spin and steal the cores the decoding threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for unreadable files
            raise BirdclefError(f"{path}: ONNX Runtime cannot load it ({type(exc).__name__}: {exc})") from exc
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        return self.outputs(wave)[0]

    def outputs(self, wave: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for one batch, in the graph's order."""
        return self.session.run(None, {self.input_name: wave})


class OpenVinoGraph:
    """An OpenVINO IR (or ONNX) file compiled for the CPU: ``graph(wave)`` -> (B, R, K) probabilities.

    With ``precision="bf16"`` the front end runs in float32 and the rest in bf16: a bf16 STFT buries
    quiet bins under rounding noise (mel image errors of ~0.1), while the CNNs lose nothing that
    matters. The graph is cut where nodes of the front-end scope (``/frontends.*``, see
    :data:`FRONTEND_SCOPE`) feed other nodes -- the mel images, and shape tensors that OpenVINO's
    symbolic shape optimisation may have rerouted into the front end -- and the two parts are
    compiled separately (``split=True``; `split` False compiles the whole graph with the hint).

    A batch is split over `streams` parallel inference streams (OpenVINO's throughput mode), each
    with its share of the threads: on the 2-core benchmark machine two single-thread streams beat one
    two-thread stream by 4% (int8) and 9% (bf16) for 5 folds of tf_efficientnetv2_s, graph alone, as
    the small late layers parallelise poorly inside one request; a 1-fold efficientnet_b0 gains
    nothing. Results do not depend on the split.

    Args:
        path: model.xml or model.onnx.
        threads: inference threads (None: OpenVINO's default, every core).
        precision: fp32 | bf16 | int8 (an nncf-quantized graph: its int8 ops run as int8, the rest f32).
        split: for bf16, keep the front end in float32.
        streams: parallel streams (None: 2 when there are at least 2 threads, else 1).
        static: also compile the graph for each batch length it meets (up to :data:`STATIC_SHAPES`; then the
            dynamic one), a batch padded to a multiple of `streams`. OpenVINO's static-shape kernels ran BirdNET
            v2.4 15 % faster (36 chunks, 2 streams; 0.3 s per compile). Needs examples that do not depend on
            each other (every exported graph here).
    """

    def __init__(self, path: Path, threads: int | None = None, precision: str = "fp32", split: bool = True,
                 streams: int | None = None, static: bool = False):
        self.ov = import_backend("openvino")
        self.core = self.ov.Core()
        cores = threads or os.cpu_count() or 1
        self.streams = max(1, min(int(streams or (2 if cores >= 2 else 1)), cores))
        self.config = {"PERFORMANCE_HINT": "LATENCY" if self.streams == 1 else "THROUGHPUT",
                       "NUM_STREAMS": self.streams}
        if threads:
            self.config["INFERENCE_NUM_THREADS"] = int(threads)
        self.precision = precision
        if precision == "bf16" and not cpu_supports_bf16():
            warnings.warn("this CPU has no native bf16 support; running the bf16 model in float32", stacklevel=2)
            self.precision = "fp32"
        self.path, self.split, self.static = Path(path), split, static
        self.stages = self._stages(None)
        # one infer request per stream and stage; a request is used by one thread at a time
        self.requests = [[stage.create_infer_request() for stage in self.stages] for _ in range(self.streams)]
        self._shaped: dict[int, list[list[Any]]] = {}
        """Per-stream requests of the graph compiled for a batch length (``static``)."""
        self.pool = ThreadPoolExecutor(self.streams) if self.streams > 1 else None
        # pybind11 initialises its numpy bridge on the first array it converts; two stream threads doing that at
        # once deadlocked (one held the init guard waiting for the GIL, the other the GIL waiting for the guard;
        # seen with OpenVINO 2026.4 on BirdNET). Converting one array here, on the caller's thread, avoids it.
        self.ov.Tensor(np.zeros(1, np.float32))

    def _stages(self, rows: int | None) -> list[Any]:
        """The compiled stage(s), for batches of `rows` (None: any batch)."""
        if self.precision == "bf16" and self.split:
            return self._split(self.path, rows)
        return [self._compile(self._read(self.path, rows), _OV_PRECISION[self.precision])]

    def _read(self, path: Path, rows: int | None = None) -> Any:
        try:
            model = self.core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with long C++ traces
            raise BirdclefError(f"{path}: OpenVINO cannot read it ({type(exc).__name__}: {exc})") from exc
        if rows is not None:
            shape = model.input(0).get_partial_shape()
            shape[0] = self.ov.Dimension(rows)
            model.reshape({model.input(0): shape})
        return model

    def _compile(self, model: Any, precision: str) -> Any:
        return self.core.compile_model(model, "CPU", {**self.config, "INFERENCE_PRECISION_HINT": precision})

    def _split(self, path: Path, rows: int | None = None) -> list[Any]:
        """Two compiled models: wave -> cut tensors (f32), cut tensors -> probs (bf16)."""
        ops = self.ov.opset13
        front = self._read(path, rows)
        cut = _frontend_cut(front)
        if not cut:
            raise BirdclefError(f"{path}: no front-end nodes ({FRONTEND_SCOPE}*) found; re-export the model")
        front_model = self.ov.Model([ops.result(port) for port in cut], list(front.get_parameters()))
        rest = self._read(path, rows)
        params = []
        for port in _frontend_cut(rest):
            param = ops.parameter(port.get_partial_shape(), port.get_element_type())
            for target in list(port.get_target_inputs()):
                if not _in_frontend(target.get_node()):
                    target.replace_source_output(param.output(0))
            params.append(param)
        rest_model = self.ov.Model(list(rest.get_results()), params)
        return [self._compile(front_model, "f32"), self._compile(rest_model, "bf16")]

    def _run(self, requests: list[Any], wave: np.ndarray) -> list[np.ndarray]:
        """One chunk through every stage on one stream's infer `requests`; the last stage's outputs."""
        inputs: list[np.ndarray] = [wave]
        for request in requests:
            result = request.infer(inputs)
            inputs = [np.array(result[i]) for i in range(len(result))]  # copies: the request reuses its buffers
        return inputs

    def _requests_for(self, rows: int) -> list[list[Any]]:
        """Per-stream requests of the graph compiled for `rows` examples (the dynamic one past STATIC_SHAPES)."""
        if rows not in self._shaped and len(self._shaped) < STATIC_SHAPES:
            stages = self._stages(rows)
            self._shaped[rows] = [[stage.create_infer_request() for stage in stages] for _ in range(self.streams)]
        return self._shaped.get(rows, self.requests)

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        return self.outputs(wave)[0]

    def outputs(self, wave: np.ndarray) -> list[np.ndarray]:
        """Every output of the graph for one batch, in the graph's order (the batch split over the streams)."""
        n, parts = len(wave), max(1, min(self.streams, len(wave)))
        requests = self.requests
        if self.static and n:
            rows = -(-n // parts)  # equal parts: the last one padded with silent examples, dropped below
            if rows * parts > n:
                wave = np.concatenate([wave, np.zeros((rows * parts - n, *wave.shape[1:]), wave.dtype)])
            requests = self._requests_for(rows)
        if self.pool is None or parts < 2:
            return [out[:n] for out in self._run(requests[0], wave)]
        results = list(self.pool.map(self._run, requests[:parts], np.array_split(wave, parts)))
        return [np.concatenate(per_output, axis=0)[:n] for per_output in zip(*results)]


def _in_frontend(node: Any) -> bool:
    return node.get_friendly_name().startswith(FRONTEND_SCOPE)


def _frontend_cut(model: Any) -> list[Any]:
    """Output ports of front-end nodes (constants excepted) that feed nodes outside it, in name order."""
    ports = [port for op in model.get_ordered_ops() if _in_frontend(op) and op.get_type_name() != "Constant"
             for port in op.outputs() if any(not _in_frontend(t.get_node()) for t in port.get_target_inputs())]
    return sorted(ports, key=lambda port: (port.get_node().get_friendly_name(), port.get_index()))


class ExportedPredictor(SinglePart):
    """:class:`~birdclef.infer.base.Predictor` over an exported model folder (no torch needed).

    Args:
        model_dir: folder written by ``birdclef export``.
        backend: onnx | openvino; None picks the format's own runtime (an ONNX file can also run
            on OpenVINO; an OpenVINO IR only on OpenVINO).
        threads: runtime threads (None: the runtime's default).
        config: post-processing and batch settings; None uses the ones stored at export.
        streams: OpenVINO's parallel inference streams (None: 2 with 2+ threads; see :class:`OpenVinoGraph`).
        precision: run a bf16 model in "fp32" instead (its IR is float32) to compare speeds; None
            runs the exported precision.

    Raises:
        BirdclefError: not a model folder, or the backend cannot run this format.
        BackendUnavailableError: the backend's package is not installed.
    """

    def __init__(self, model_dir: str | Path, backend: str | None = None, threads: int | None = None,
                 config: InferConfig | None = None, streams: int | None = None, precision: str | None = None):
        self.model_dir = Path(model_dir)
        self.streams = streams
        self.meta = read_metadata(self.model_dir)
        self.precision = precision or self.meta["precision"]
        if self.precision != self.meta["precision"] and (self.meta["precision"], self.precision) != ("bf16", "fp32"):
            raise BirdclefError(f"{self.model_dir}: a {self.meta['precision']} model cannot run as {self.precision} "
                                "(only a bf16 model can run as fp32)")
        self.backend = backend or self.meta["format"]
        self.threads = threads
        self.classes: list[str] = list(self.meta["classes"])
        self.sample_rate: int = int(self.meta["sample_rate"])
        self.window_s = float(self.meta["input_window_s"])
        self.weights = normalise_weights(self.meta["weights"], len(self.meta["weights"]))
        self.n_runs = len(self.weights)
        self.lead, self.length = span(self.sample_rate, self.window_s)
        self.config = config or config_from_dict({"infer": self.meta.get("infer", {})}).infer
        self.graph = self._load_graph()
        self.checkpoints = [str((self.model_dir / GRAPH_FILES[self.meta["format"]]).resolve())]

    def _load_graph(self) -> OnnxRuntimeGraph | OpenVinoGraph:
        fmt, precision = self.meta["format"], self.precision
        path = self.model_dir / GRAPH_FILES[fmt]
        if self.backend == "onnx":
            if fmt != "onnx":
                raise BirdclefError(f"{self.model_dir}: an {fmt} model cannot run on ONNX Runtime; use --backend openvino")
            return OnnxRuntimeGraph(path, self.threads)
        if self.backend == "openvino":
            return OpenVinoGraph(path, self.threads, precision, streams=self.streams)
        raise BirdclefError(f"unknown backend {self.backend!r} for an exported model; choose from {list(BACKENDS)}")

    def predict_windows(self, windows: np.ndarray) -> np.ndarray:
        """(N, samples) float32 windows -> (N, R, K) probabilities, in batches of ``config.batch_size``."""
        step = max(1, self.config.batch_size)
        parts = [self.graph(np.ascontiguousarray(windows[i : i + step], dtype=np.float32))
                 for i in range(0, len(windows), step)]
        return np.concatenate(parts, axis=0)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        """Each run's fold-averaged (N, K) probabilities of (N, input window) spans (no post-processing)."""
        probs = self.predict_windows(spans)  # (N, R, K)
        return [probs[:, r, :].astype(np.float64) for r in range(probs.shape[1])]

    def settings(self) -> dict:
        return {"backend": self.backend, "model": str(self.model_dir.resolve()), "format": self.meta["format"],
                "precision": self.precision, "created": self.meta.get("created"),
                "weights": self.weights.tolist(), "infer": config_to_dict(self.config)}
