"""BirdNET v2.4's CNN as a trainable torch module, built straight from the user's ``.tflite`` (no TensorFlow/ONNX).

:class:`BirdnetCNN` is a small interpreter of the TFLite op list between the front end's output
``model/concatenate/concat`` (``[B, 96, T, 2]``, NHWC: mel band, frame, branch) and the embedding (the
input of the last ``FULLY_CONNECTED``). Every float constant that a conv or an elementwise op reads
(conv kernels and biases with BatchNorm already folded in by the converter, the two standalone BN
scale/shift pairs) becomes an ``nn.Parameter``; a constant the file shares between ops (its zero
biases are de-duplicated) becomes one parameter per use, so fine-tuning can move them apart.

Tensors flow in NHWC, as in the graph, so RESHAPE / MEAN / CONCATENATION axes mean what the file says;
an NHWC-contiguous tensor ``.permute(0, 3, 1, 2)`` is a channels-last NCHW tensor, so the convs run on
views without copies. SAME padding follows TF (the odd pixel goes bottom/right). The squeeze-excite
plumbing (SHAPE -> STRIDED_SLICE -> PACK -> RESHAPE) is evaluated on the runtime shapes, so any
number of frames works. An op outside :data:`SUPPORTED_OPS` raises a :class:`BirdclefError`.

The weights are CC BY-NC-SA 4.0 (BirdNET's licence): they are read from the user's file at run time,
and anything fine-tuned from them is Adapted Material under the same licence.

Example:
    >>> cnn = BirdnetCNN.from_file(bundled_model_path())
    >>> cnn.forward_features(torch.zeros(2, 96, 511, 2)).shape   # (B, 1024, F', T')
    torch.Size([2, 1024, 1, 6])
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from birdclef.birdnet.model import read_graph
from birdclef.errors import BirdclefError

log = logging.getLogger(__name__)

CNN_INPUT = "model/concatenate/concat"
"""The front end's output in the v2.4 graph: where the CNN starts."""
UNKNOWN_CLASS_BIAS = math.log(0.01 / 0.99)
"""Bias of head rows for classes BirdNET does not know: the logit of a 1 % prior (RetinaNet's prior init,
Lin et al. 2017). A class is present in far fewer than half of the windows, so starting those rows at
p = 0.5 would make their loss, and its gradient into the pretrained backbone, dominate the first steps."""
_SWISH = "_SWISH"  # internal: a fused x * sigmoid(x), not a TFLite op name
_FLOAT32, _NUMPY_TYPES = 0, {0: np.float32, 2: np.int32, 4: np.int64, 9: np.int8, 3: np.uint8, 6: np.bool_}


class GraphConstants:
    """Constant tensors of a parsed ``.tflite`` (first subgraph), by index or by name, as numpy arrays."""

    def __init__(self, path: Path, graph=None):
        self.path = Path(path)
        self.graph = graph if graph is not None else read_graph(self.path)
        self.sub = self.graph.subgraphs[0]
        self._names = {t.name.decode(errors="replace"): i for i, t in enumerate(self.sub.tensors)}

    def index(self, name: str) -> int:
        if name not in self._names:
            raise BirdclefError(f"{self.path}: no tensor {name!r} in the graph; not a BirdNET v2.4 model")
        return self._names[name]

    def value(self, index: int) -> np.ndarray | None:
        """The constant's data in its shape, or None when the tensor is computed at run time."""
        meta = self.sub.tensors[index]
        raw = self.graph.buffers[meta.buffer].data if meta.buffer < len(self.graph.buffers) else None
        if raw is None:
            return None
        if meta.type not in _NUMPY_TYPES:
            raise BirdclefError(f"{self.path}: constant {meta.name.decode()!r} has unsupported type {meta.type}")
        shape = [] if meta.shape is None else [int(d) for d in meta.shape]
        return np.frombuffer(np.asarray(raw, np.uint8).tobytes(), _NUMPY_TYPES[meta.type]).reshape(shape).copy()

    def by_name(self, name: str) -> np.ndarray:
        value = self.value(self.index(name))
        if value is None:
            raise BirdclefError(f"{self.path}: tensor {name!r} is not a constant; not a BirdNET v2.4 model")
        return value

    def op_name(self, op) -> str:
        code = self.graph.operatorCodes[op.opcodeIndex]
        number = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))  # codes > 127 live in builtinCode
        return _BUILTIN_NAMES.get(number, f"builtin op {number}")


def _builtin_names() -> dict[int, str]:
    from ai_edge_litert.schema_py_generated import BuiltinOperator as ops  # importable: read_graph used it

    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


_BUILTIN_NAMES: dict[int, str] = {}


@dataclass
class _Step:
    kind: str
    inputs: list[int]
    outputs: list[int]
    options: object
    consts: dict[int, object] = field(default_factory=dict)
    """Input slot -> a parameter name (float constants) or a numpy array (int constants)."""


class BirdnetCNN(nn.Module):
    """BirdNET's CNN: (B, 96, T, 2) spectrogram (NHWC, :class:`~birdclef.birdnet.frontend.BirdnetFrontend`) -> features.

    Build it with :meth:`from_file`. :meth:`forward_features` gives the (B, 1024, F', T') map before the
    graph's global average pool (F' = frequency, T' = time, as the heads expect); :meth:`forward` pools it
    into BirdNET's 1024-d embedding.
    """

    num_features = 1024

    def __init__(self, steps: list[_Step], params: dict[str, np.ndarray], source: int, features: int, path: Path):
        super().__init__()
        self.path = path
        self._steps, self._source, self._features = steps, source, features
        self.params = nn.ParameterDict({k: nn.Parameter(torch.from_numpy(v)) for k, v in params.items()})

    @classmethod
    def from_file(cls, path: str | Path, graph=None) -> BirdnetCNN:
        """Read the CNN of a BirdNET v2.4 ``.tflite`` (`graph`: its already parsed ``ModelT``).

        Raises:
            BirdclefError: unreadable or foreign file, an op outside :data:`SUPPORTED_OPS`, or a graph
                whose embedding is not a global average pool of a 1024-channel map.
        """
        if not _BUILTIN_NAMES:
            _BUILTIN_NAMES.update(_builtin_names())
        consts = GraphConstants(Path(path), graph)
        source, embedding = consts.index(CNN_INPUT), _embedding_tensor(consts)
        ops = _ops_between(consts, source, embedding)
        *body, (_, pool) = ops
        if consts.op_name(pool) != "MEAN" or sorted(consts.value(pool.inputs[1]).ravel().tolist()) != [1, 2]:
            raise BirdclefError(f"{consts.path}: the embedding is not a mean over height and width "
                                f"({consts.op_name(pool)}); not a BirdNET v2.4 model")
        params: dict[str, np.ndarray] = {}
        steps = _fuse_swish([_make_step(consts, k, op, params) for k, op in body], int(pool.inputs[0]))
        cnn = cls(steps, params, source, int(pool.inputs[0]), consts.path)
        channels = consts.sub.tensors[cnn._features].shape[-1]
        if int(channels) != cls.num_features:
            raise BirdclefError(f"{consts.path}: the embedding has {channels} channels, expected {cls.num_features}")
        return cnn

    def forward_features(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 96, T, 2) NHWC spectrogram -> (B, 1024, F', T') feature map (a channels-last NCHW view)."""
        env: dict[int, object] = {self._source: spec}
        for step in self._steps:
            args = [self._arg(step, slot, t, env) for slot, t in enumerate(step.inputs)]
            env[step.outputs[0]] = _OPS[step.kind](step, args)
        return env[self._features].permute(0, 3, 1, 2)

    def forward(self, spec: torch.Tensor) -> torch.Tensor:
        """(B, 96, T, 2) -> (B, 1024) embedding (BirdNET's ``GLOBAL_AVG_POOL``)."""
        return self.forward_features(spec).mean(dim=(2, 3))

    def _arg(self, step: _Step, slot: int, tensor: int, env: dict[int, object]):
        if tensor < 0:
            return None
        const = step.consts.get(slot)
        if isinstance(const, str):
            return self.params[const]
        return const if const is not None else env[tensor]


def init_head_from_birdnet(model: nn.Module, classes: Sequence[str], taxonomy_csv: str | Path):
    """Start a BirdNET classifier's linear head from BirdNET's own output layer, so training starts zero-shot.

    The fc rows of the classes BirdNET knows (matched by scientific name, :func:`~birdclef.birdnet.classes.map_classes`)
    get BirdNET's dense weights and bias, so their initial logit is BirdNET's zero-shot logit on a 3 s
    input; the other rows keep their random init with the bias :data:`UNKNOWN_CLASS_BIAS`. Heads other
    than ``linear`` (``sed``) are left as they are, with a warning.

    Args:
        model: a :class:`~birdclef.models.BirdClassifier` with ``backbone=birdnet``.
        classes: its class names, in output order.
        taxonomy_csv: the dataset's taxonomy.csv (``primary_label``, ``scientific_name``).

    Returns:
        The :class:`~birdclef.birdnet.classes.ClassMapping`, or None when the head was left alone.

    Raises:
        DatasetError: the taxonomy is missing or unreadable.
    """
    from birdclef.birdnet.classes import map_classes, read_scientific_names
    from birdclef.birdnet.model import labels_path_for, output_layer, read_labels
    from birdclef.errors import DatasetError
    from birdclef.models.heads import LinearHead

    if not isinstance(model.head, LinearHead):
        log.warning("model.init_from_birdnet applies to the linear head only; the %s head keeps its random init",
                    type(model.head).__name__)
        return None
    if not Path(taxonomy_csv).is_file():
        raise DatasetError(f"{taxonomy_csv}: not found; model.init_from_birdnet matches classes to BirdNET's labels "
                           "by its scientific_name column (or set model.init_from_birdnet=false)")
    path = model.backbone.path
    mapping = map_classes(classes, read_scientific_names(taxonomy_csv), read_labels(labels_path_for(path)))
    weight, bias = output_layer(path)
    known = torch.from_numpy(mapping.known)
    rows = torch.from_numpy(mapping.index[mapping.known])
    with torch.no_grad():
        fc = model.head.fc
        fc.weight[known] = torch.from_numpy(weight)[rows].to(fc.weight)
        fc.bias[known] = torch.from_numpy(bias)[rows].to(fc.bias)
        fc.bias[~known] = UNKNOWN_CLASS_BIAS
    log.info("head: %d of %d classes start from BirdNET's output layer; %d unknown to it (bias %.2f)",
             int(known.sum()), len(classes), int((~known).sum()), UNKNOWN_CLASS_BIAS)
    return mapping


def _embedding_tensor(consts: GraphConstants) -> int:
    """The input of the FULLY_CONNECTED op that writes the graph's first output (BirdNET's class layer)."""
    out = int(consts.sub.outputs[0])
    writers = [op for op in consts.sub.operators if out in list(op.outputs)]
    if len(writers) != 1 or consts.op_name(writers[0]) != "FULLY_CONNECTED":
        raise BirdclefError(f"{consts.path}: the graph's output is not written by one dense layer; "
                            "not a BirdNET v2.4 model")
    return int(writers[0].inputs[0])


def _ops_between(consts: GraphConstants, source: int, target: int) -> list[tuple[int, object]]:
    """(index, op) of the ops that compute `target` from `source` and constants, in graph order."""
    operators = consts.sub.operators
    producer = {int(t): k for k, op in enumerate(operators) for t in op.outputs}
    needed, stack = set(), [target]
    while stack:
        tensor = stack.pop()
        if tensor < 0 or tensor == source or consts.value(tensor) is not None:
            continue
        if tensor not in producer:
            name = consts.sub.tensors[tensor].name.decode(errors="replace")
            raise BirdclefError(f"{consts.path}: the embedding depends on {name!r}, not only on {CNN_INPUT!r}; "
                                "not a BirdNET v2.4 model")
        if producer[tensor] not in needed:
            needed.add(producer[tensor])
            stack.extend(int(t) for t in operators[producer[tensor]].inputs)
    return [(k, operators[k]) for k in sorted(needed)]


def _make_step(consts: GraphConstants, k: int, op, params: dict[str, np.ndarray]) -> _Step:
    kind = consts.op_name(op)
    if kind not in _OPS:
        raise BirdclefError(f"{consts.path}: op #{k} {kind} is not supported by the torch builder "
                            f"(supported: {', '.join(SUPPORTED_OPS)})")
    step = _Step(kind, [int(t) for t in op.inputs], [int(t) for t in op.outputs], op.builtinOptions)
    for slot, tensor in enumerate(step.inputs):
        value = None if tensor < 0 else consts.value(tensor)
        if value is None:
            continue
        if consts.sub.tensors[tensor].type != _FLOAT32:
            step.consts[slot] = value
            continue
        name = f"op{k:03d}_{slot}"
        params[name] = _torch_layout(kind, slot, value.astype(np.float32))
        step.consts[slot] = name
    return step


def _fuse_swish(steps: list[_Step], keep: int) -> list[_Step]:
    """``MUL(x, LOGISTIC(x))`` -> one ``F.silu(x)`` step when nothing else reads the sigmoid (58 of 60 MULs in v2.4).

    Same values; faster, and autograd keeps one tensor per swish instead of two.
    """
    readers = Counter(t for step in steps for t in step.inputs)
    sigmoid_of = {step.outputs[0]: step.inputs[0] for step in steps if step.kind == "LOGISTIC"}
    fused = set()
    for step in steps:
        if step.kind != "MUL" or step.consts or len(step.inputs) != 2 or getattr(step.options, "fusedActivationFunction", 0):
            continue
        a, b = step.inputs
        for x, gate in ((a, b), (b, a)):
            if sigmoid_of.get(gate) == x and readers[gate] == 1 and gate != keep:
                step.kind, step.inputs = _SWISH, [x]
                fused.add(gate)
                break
    return [step for step in steps if not (step.kind == "LOGISTIC" and step.outputs[0] in fused)]


def _torch_layout(kind: str, slot: int, value: np.ndarray) -> np.ndarray:
    """TFLite kernels to torch: CONV_2D [O, KH, KW, I] -> [O, I, KH, KW]; DEPTHWISE [1, KH, KW, C] -> [C, 1, KH, KW]."""
    if slot == 1 and kind == "CONV_2D":
        return np.ascontiguousarray(value.transpose(0, 3, 1, 2))
    if slot == 1 and kind == "DEPTHWISE_CONV_2D":
        return np.ascontiguousarray(value.transpose(3, 0, 1, 2))
    return value


# ---- op implementations: (step, args) -> value; tensors are NHWC torch tensors, shapes python lists ----


def _activation(x: torch.Tensor, options) -> torch.Tensor:
    code = getattr(options, "fusedActivationFunction", 0) or 0
    if code == 0:
        return x
    if code == 1:
        return F.relu(x)
    if code == 3:
        return F.relu6(x)
    raise BirdclefError(f"fused activation {code} is not supported by the torch builder")


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF SAME padding of one axis: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pads(x: torch.Tensor, options, kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) for an NCHW view `x`; zeros for VALID."""
    if options.padding != 0:  # 1 = VALID
        return 0, 0, 0, 0
    top, bottom = _same_pads(x.shape[2], kernel[0], options.strideH, dilation[0])
    left, right = _same_pads(x.shape[3], kernel[1], options.strideW, dilation[1])
    return left, right, top, bottom


def _conv(step: _Step, args: list) -> torch.Tensor:
    x, weight, bias = args[0].permute(0, 3, 1, 2), args[1], args[2] if len(args) > 2 else None
    o = step.options
    dilation = (o.dilationHFactor or 1, o.dilationWFactor or 1)
    left, right, top, bottom = _pads(x, o, weight.shape[2:], dilation)
    padding: tuple[int, int] | int = 0
    if (left, top) == (right, bottom):
        padding = (top, left)
    else:
        x = F.pad(x, (left, right, top, bottom))
    groups = x.shape[1] if step.kind == "DEPTHWISE_CONV_2D" else 1
    y = F.conv2d(x, weight, bias, (o.strideH, o.strideW), padding, dilation, groups)
    return _activation(y, o).permute(0, 2, 3, 1)


def _pool(step: _Step, args: list) -> torch.Tensor:
    x, o = args[0].permute(0, 3, 1, 2), step.options
    kernel, stride = (o.filterHeight, o.filterWidth), (o.strideH, o.strideW)
    pads = _pads(x, o, kernel, (1, 1))
    if step.kind == "MAX_POOL_2D":
        y = F.max_pool2d(F.pad(x, pads, value=-math.inf) if any(pads) else x, kernel, stride)
    elif any(pads):  # TF's SAME average excludes the padding from the count
        y = F.avg_pool2d(F.pad(x, pads), kernel, stride) / F.avg_pool2d(F.pad(torch.ones_like(x[:, :1]), pads), kernel, stride)
    else:
        y = F.avg_pool2d(x, kernel, stride)
    return _activation(y, o).permute(0, 2, 3, 1)


def _strided_slice(step: _Step, args: list):
    x, begin, end, strides = args[0], *(np.asarray(a).ravel().tolist() for a in args[1:4])
    o = step.options
    if o.ellipsisMask or o.newAxisMask:
        raise BirdclefError("STRIDED_SLICE with ellipsis or new-axis masks is not supported by the torch builder")
    index: list[object] = []
    for d, (b, e, s) in enumerate(zip(begin, end, strides)):
        if o.shrinkAxisMask >> d & 1:
            index.append(int(b))
        else:
            index.append(slice(None if o.beginMask >> d & 1 else b, None if o.endMask >> d & 1 else e, s))
    if isinstance(x, list):
        if len(index) != 1:
            raise BirdclefError("STRIDED_SLICE of a shape vector must be 1-D")
        return x[index[0]]
    return x[tuple(index)]


def _pack(step: _Step, args: list):
    if all(not isinstance(a, torch.Tensor) or a.dim() == 0 for a in args):
        return [int(a) if isinstance(a, np.ndarray) else a for a in args]  # a shape vector
    return torch.stack(args, dim=step.options.axis)


def _reshape(step: _Step, args: list) -> torch.Tensor:
    shape = args[1] if len(args) > 1 and args[1] is not None else step.options.newShape
    shape = shape.ravel().tolist() if isinstance(shape, np.ndarray) else list(shape)
    return args[0].reshape(shape)


def _pad(step: _Step, args: list) -> torch.Tensor:
    pads = np.asarray(args[1]).reshape(-1, 2)[::-1].ravel().tolist()  # torch wants the last axis first
    return F.pad(args[0], pads)


def _mean(step: _Step, args: list) -> torch.Tensor:
    return args[0].mean(dim=np.asarray(args[1]).ravel().tolist(), keepdim=bool(step.options.keepDims))


_OPS = {
    "ADD": lambda s, a: _activation(a[0] + a[1], s.options),
    "MUL": lambda s, a: _activation(a[0] * a[1], s.options),
    "LOGISTIC": lambda s, a: torch.sigmoid(a[0]),
    "CONCATENATION": lambda s, a: _activation(torch.cat(a, dim=s.options.axis), s.options),
    "CONV_2D": _conv, "DEPTHWISE_CONV_2D": _conv, "AVERAGE_POOL_2D": _pool, "MAX_POOL_2D": _pool,
    "MEAN": _mean, "PAD": _pad, "PACK": _pack, "RESHAPE": _reshape, "STRIDED_SLICE": _strided_slice,
    "SHAPE": lambda s, a: list(a[0].shape),
}
_OPS[_SWISH] = lambda s, a: F.silu(a[0])
SUPPORTED_OPS = tuple(sorted(k for k in _OPS if k != _SWISH))
"""The TFLite builtin ops the builder turns into torch (what the v2.4 CNN uses)."""
