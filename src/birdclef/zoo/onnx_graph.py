"""An ONNX audio model on ONNX Runtime's CPU provider: what the ``perch-v2`` and ``onnx`` kinds share.

:class:`OnnxGraph` opens one ``.onnx`` file (sequential execution, ``threads`` intra-op threads, idle workers not
spinning), describes its inputs and outputs (:class:`Port`: name, shape with ``None`` for a symbolic dimension,
element type), and runs ``(N, samples)`` windows in batches, fetching only the outputs it is asked for (ONNX
Runtime then computes only the nodes those outputs need). Every failure names the file: a file that is not an
ONNX model, a missing input or output (the message lists the graph's own), a window length the graph refuses.

Example:
    >>> graph = OnnxGraph(Path("/models/perch_v2.onnx"), threads=2, what="Perch v2 model")
    >>> graph.outputs["embedding"].shape                    # (None, 1536)
    >>> embedding, = graph.run("inputs", ["embedding"], windows, batch_size=16)   # (N, 1536) float32
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from birdclef.errors import BirdclefError

INPUT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}
"""Input element types the windows can be cast to (float32, and the float16 of half-precision releases)."""


@dataclass(frozen=True)
class Port:
    """One input or output of a graph."""

    name: str
    shape: tuple[int | None, ...]
    """Its dimensions; None where the graph leaves one symbolic (the batch, usually)."""
    type: str
    """ONNX Runtime's element type, e.g. ``tensor(float)``."""

    @property
    def width(self) -> int | None:
        """The last dimension when the graph fixes it."""
        return self.shape[-1] if self.shape else None


def _port(arg) -> Port:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or ()))
    return Port(arg.name, shape, arg.type)


class OnnxGraph:
    """One ONNX file on ONNX Runtime's CPU provider (module docstring).

    Args:
        path: the ``.onnx`` file.
        threads: intra-op threads (None: ONNX Runtime's default, one per physical core).
        what: how errors name the file's role, e.g. ``"Perch v2 model"``.

    Raises:
        BirdclefError: no such file, or not a model ONNX Runtime can load.
        BackendUnavailableError: onnxruntime is not installed (the message names the pip package).
    """

    def __init__(self, path: Path, threads: int | None = None, what: str = "ONNX model"):
        from birdclef.export.runtime import import_backend

        self.path, self.what = Path(path), what
        if not self.path.is_file():
            raise BirdclefError(f"{self.path}: {what} file not found")
        ort = import_backend("onnx")
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if threads:
            options.intra_op_num_threads = int(threads)
        # Idle worker threads would otherwise spin and steal the cores the decoding threads need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own untyped errors for foreign or truncated files
            raise BirdclefError(f"{self.path}: not an ONNX model ONNX Runtime can load "
                                f"({type(exc).__name__}: {str(exc).strip()[:300]})") from None
        self.inputs = {arg.name: _port(arg) for arg in self.session.get_inputs()}
        self.outputs = {arg.name: _port(arg) for arg in self.session.get_outputs()}

    def input(self, name: str, hint: str = "") -> Port:
        """The input `name` (BirdclefError listing the graph's inputs, then `hint`, when it has none such)."""
        return self._port("input", self.inputs, name, hint)

    def output(self, name: str, hint: str = "") -> Port:
        """The output `name` (BirdclefError listing the graph's outputs, then `hint`, when it has none such)."""
        return self._port("output", self.outputs, name, hint)

    def _port(self, side: str, ports: dict[str, Port], name: str, hint: str) -> Port:
        if name not in ports:
            raise BirdclefError(f"{self.path}: the {self.what} has no {side} {name!r} (its {side}s: "
                                f"{list(ports)}){hint}")
        return ports[name]

    def input_dtype(self, name: str) -> type:
        """The numpy type windows are cast to for input `name` (float32 or float16).

        Raises:
            BirdclefError: the input takes another element type (int16 PCM, say).
        """
        port = self.input(name)
        if port.type not in INPUT_TYPES:
            raise BirdclefError(f"{self.path}: input {name!r} takes {port.type}; birdclef feeds float32 or "
                                f"float16 waveforms")
        return INPUT_TYPES[port.type]

    def widths(self, input_name: str, names: list[str], samples: int) -> dict[str, int]:
        """The last dimension of each output in `names`: from the graph, or, where it leaves one symbolic, by
        running one silent ``(1, samples)`` window.

        Raises:
            BirdclefError: an output is not ``(batch, width)``.
        """
        known = {n: self.output(n).width for n in names}
        if any(width is None for width in known.values()):
            probed = self.run(input_name, names, np.zeros((1, samples), np.float32), batch_size=1)
            known = {n: int(out.shape[-1]) for n, out in zip(names, probed)}
        for name in names:
            rank = len(self.outputs[name].shape)
            if rank not in (0, 2):  # 0: the graph does not say
                raise BirdclefError(f"{self.path}: output {name!r} has shape {self.outputs[name].shape}; "
                                    "birdclef reads (batch, width) outputs")
        return known

    def run(self, input_name: str, names: list[str], windows: np.ndarray, batch_size: int) -> list[np.ndarray]:
        """The outputs `names` of `windows` ((N, samples) float32), `batch_size` windows per run, as float32.

        Raises:
            BirdclefError: ONNX Runtime refuses the windows or an output is not (N, width).
        """
        dtype = self.input_dtype(input_name)
        batch_size = max(1, int(batch_size))
        parts: list[list[np.ndarray]] = [[] for _ in names]
        for begin in range(0, len(windows), batch_size):
            batch = np.ascontiguousarray(windows[begin : begin + batch_size], dtype=dtype)
            try:
                outputs = self.session.run(names, {input_name: batch})
            except Exception as exc:  # onnxruntime's untyped errors: a shape or type the graph refuses
                raise BirdclefError(f"{self.path}: ONNX Runtime cannot run the {self.what} on a {batch.shape} "
                                    f"batch ({type(exc).__name__}: {str(exc).strip()[:300]})") from None
            for part, out in zip(parts, outputs):
                part.append(np.asarray(out, np.float32))
        if not len(windows):
            return [np.zeros((0, 0), np.float32) for _ in names]
        joined = [np.concatenate(part) for part in parts]
        for name, out in zip(names, joined):
            if out.ndim != 2 or len(out) != len(windows):
                raise BirdclefError(f"{self.path}: output {name!r} of {len(windows)} windows has shape "
                                    f"{out.shape}; birdclef reads (batch, width) outputs")
        return joined


def check_windows(windows: np.ndarray, samples: int, path: Path, rate: int, window_s: float) -> np.ndarray:
    """`windows` as a (N, samples) float32 array.

    Raises:
        BirdclefError: another shape (the message gives the model's window and rate).
    """
    windows = np.asarray(windows, dtype=np.float32)
    if windows.ndim != 2 or windows.shape[1] != samples:
        raise BirdclefError(f"{path}: the model takes (N, {samples}) windows ({window_s:g} s at {rate} Hz), "
                            f"got {windows.shape}")
    return windows


def dense_layer(path: Path, output: str, embedding: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(weight (L, D), bias (L,))`` float32 when the graph computes `output` as one dense layer of its `embedding`
    output (``MatMul`` [+ ``Add``], or ``Gemm``, on stored constants; ``Identity`` nodes between are passed);
    None when it is built otherwise (a head then starts from zero rows for that model).

    Raises:
        BirdclefError: the file is not a readable ONNX model.
    """
    import onnx
    from onnx import numpy_helper

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf and OS errors alike: the file is unusable
        raise BirdclefError(f"{path}: not a readable ONNX model ({type(exc).__name__})") from None
    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}
    for node in graph.node:
        for name in node.output:
            producer[name] = node
        if node.op_type == "Constant" and node.attribute and node.attribute[0].t is not None:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)

    def source(name: str) -> str:  # through Identity nodes
        while name in producer and producer[name].op_type == "Identity":
            name = producer[name].input[0]
        return name

    def is_embedding(name: str) -> bool:
        return source(name) == source(embedding)

    node = producer.get(source(output))
    bias = None
    if node is not None and node.op_type == "Add":
        left, right = node.input
        if right in constants and left in producer:
            bias, node = constants[right], producer[source(left)]
        elif left in constants and right in producer:
            bias, node = constants[left], producer[source(right)]
        else:
            return None
    if node is None:
        return None
    if node.op_type == "MatMul" and is_embedding(node.input[0]) and node.input[1] in constants:
        weight = constants[node.input[1]].T  # (D, L) -> (L, D)
    elif node.op_type == "Gemm" and bias is None and is_embedding(node.input[0]) and node.input[1] in constants:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            return None
        stored = constants[node.input[1]]
        weight = stored if attrs.get("transB", 0) else stored.T
        bias = constants.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    else:
        return None
    weight = np.asarray(weight, np.float32)
    bias = np.zeros(len(weight), np.float32) if bias is None else np.asarray(bias, np.float32).reshape(-1)
    return (weight, bias) if weight.ndim == 2 and bias.shape == (len(weight),) else None
