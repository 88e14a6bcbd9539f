"""``birdclef export``: training runs -> one parity-checked graph in a model folder.

The folds of one run -- or of several blended runs -- and their front ends become one graph
(:class:`~birdclef.export.graph.FusedEnsemble`), exported to ONNX (TorchScript exporter, opset 17,
dynamic batch axis) and, for OpenVINO, converted to IR. Precisions:

- ``fp32``: the graph as exported.
- ``bf16``: OpenVINO only (ONNX Runtime has no bf16 CPU kernels); the IR stays float32 and the
  runtime compiles the CNNs with a bf16 inference-precision hint, the front end in float32
  (:class:`~birdclef.export.runtime.OpenVinoGraph`). Needs a CPU with bf16 (AVX512-BF16 / AMX),
  and is faster than fp32 only on some of them: the export times the model both ways on a batch
  of parity windows, records it (``metadata.json`` ``speed``) and warns when bf16 was slower.
- ``int8``: post-training static quantization calibrated on real audio windows, front end excluded
  (ONNX: ``onnxruntime.quantization.quantize_static``, QDQ; OpenVINO: ``nncf.quantize``). On the
  2-core AMD EPYC (AVX512-VNNI) of ``benchmarks/bench_predict.py`` OpenVINO int8 runs 1.5x faster
  than bf16 for 5 folds of tf_efficientnetv2_s (0.99 vs 1.47 s per audio minute end to end) and
  1.2x for efficientnet_b0, while ONNX Runtime's QDQ int8 is slower than its fp32. Calibration
  recordings are never the ones parity scores (:func:`~birdclef.export.sources.split_recordings`).

Before anything is written, the exported graph is run on real audio beside the torch model
(:mod:`birdclef.export.parity`; the audio: ``parity_audio`` or the run's own data,
:mod:`birdclef.export.sources`); when it breaks the precision's tolerance the export is refused
(:class:`ParityError`) and `out` is left untouched, unless ``force``.

Example:
    >>> report = export_model(["runs/baseline"], format="openvino", precision="bf16", out=Path("models/b0-bf16"))
    >>> print(report.summary())
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import birdclef
from birdclef.config import InferConfig, config_to_dict
from birdclef.errors import BirdclefError
from birdclef.export.graph import FRONTEND_SCOPE, FusedEnsemble, RunSpec
from birdclef.export.parity import DEFAULT_FILES, TOLERANCES, ParityResult, check_parity
from birdclef.export.plan import median_time
from birdclef.export.runtime import KIND as EXPORTED
from birdclef.export.runtime import METADATA, ExportedPredictor, cpu_supports_bf16, import_backend
from birdclef.export.sources import ParityAudio, Recording, find_audio, split_recordings
from birdclef.infer.base import ROW_WINDOW_S, context_windows, row_count
from birdclef.infer.predict import TorchPredictor
from birdclef.utils.io import write_json_atomic

FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "bf16", "int8")
OPSET = 17
CALIBRATION_WINDOWS = 96
"""Audio windows int8 calibration sees (from recordings parity does not score)."""
SPEED_WINDOWS = 12
"""Windows of the bf16-vs-fp32 timing (one batch), timed SPEED_REPEATS times each (median)."""
SPEED_REPEATS = 3


class ParityError(BirdclefError):
    """The exported graph does not match torch closely enough; nothing was written.

    Attributes:
        report: the :class:`ExportReport` with the parity numbers.
    """

    def __init__(self, report: ExportReport):
        self.report = report
        super().__init__(f"export refused, {report.out} not written: {report.parity.summary()}; "
                         "re-run with --force to write it anyway")


@dataclass
class ExportReport:
    """What :func:`export_model` did."""

    out: Path
    format: str
    precision: str
    parity: ParityResult
    written: bool
    forced: bool = False
    export_s: float = 0.0
    files: list[str] = field(default_factory=list)
    audio: str = ""
    """Where the parity (and calibration) recordings came from."""
    calibration: list[str] = field(default_factory=list)
    """int8: the recordings calibration saw (disjoint from ``parity.files``)."""
    speed: dict | None = None
    """bf16: seconds per batch of bf16 and of the same model in fp32 here, and their ratio."""
    notes: list[str] = field(default_factory=list)
    """Warnings and remarks (a split parity folder, bf16 slower than fp32 here)."""

    def summary(self) -> str:
        state = "written" if self.written else "NOT written"
        forced = " (forced past a failed parity check)" if self.forced and not self.parity.passed else ""
        return (f"{self.format}/{self.precision} model {state} to {self.out}{forced} in {self.export_s:.1f} s; "
                f"audio: {self.audio}; {self.parity.summary()}{''.join(chr(10) + n for n in self.notes)}")


def check_target(format: str, precision: str) -> None:
    """Refuse, before any work, a format / precision this machine cannot produce.

    Raises:
        BirdclefError: unknown format or precision, bf16 with ONNX or on a CPU without bf16.
        BackendUnavailableError: onnx, onnxruntime, openvino or nncf is missing (named in the message).
    """
    if format not in FORMATS:
        raise BirdclefError(f"unknown export format {format!r}; choose from {list(FORMATS)}")
    if precision not in PRECISIONS:
        raise BirdclefError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if importlib.util.find_spec("onnx") is None:
        raise BirdclefError("export needs the 'onnx' package (every format goes through ONNX); pip install onnx")
    import_backend(format)
    if precision == "bf16" and format == "onnx":
        raise BirdclefError("bf16 is an OpenVINO precision (ONNX Runtime has no bf16 CPU kernels); "
                            "use --format openvino --precision bf16")
    if precision == "bf16" and not cpu_supports_bf16():
        raise BirdclefError("this CPU has no native bf16 support (OpenVINO OPTIMIZATION_CAPABILITIES lacks BF16); "
                            "export fp32 or int8")
    # bf16 with the CPU flag is allowed but not assumed faster: export_model times it (speed_check).
    if precision == "int8" and format == "openvino" and importlib.util.find_spec("nncf") is None:
        raise BirdclefError("int8 for OpenVINO is not available: it needs the 'nncf' package (pip install nncf); "
                            "or use --format onnx --precision int8")


def build_graph(predictor: TorchPredictor) -> FusedEnsemble:
    """The fused module of a torch predictor's runs (classes in the predictor's order), in eval mode."""
    specs = []
    for ens in predictor.ensembles:
        order = None if ens.classes == predictor.classes else [ens.classes.index(c) for c in predictor.classes]
        specs.append(RunSpec(ens.models, int(round(ens.window_s * ens.sample_rate)), order))
    return FusedEnsemble(specs, int(round(ROW_WINDOW_S * predictor.sample_rate))).eval()


def export_onnx(module: torch.nn.Module, path: Path, output_names: Sequence[str] = ("probs",)) -> list[str]:
    """Export `module` to `path` (opset 17, dynamic batch); returns the front ends' output tensor names.

    Args:
        module: takes (B, ``module.num_samples``) waves; a :class:`FusedEnsemble` returns (B, R, K) probabilities.
        path: the .onnx file to write.
        output_names: one name per output of ``module.forward``, each with a dynamic batch axis.

    The TorchScript exporter is used: its node names keep the module scope (``/frontends.0/...``),
    which the bf16 and int8 paths need to keep the front end in float32.
    """
    example = torch.zeros(2, module.num_samples)
    axes = {name: {0: "batch"} for name in ("wave", *output_names)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["wave"], output_names=list(output_names),
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return frontend_boundary(path)[1]


def simplify_onnx(src: Path, dst: Path) -> None:
    """Write `src` with ONNX Runtime's *basic* graph rewrites applied (constant folding, redundant Transpose,
    Reshape and Identity removal) as plain ONNX to `dst`.

    Basic rewrites are hardware-independent (ONNX Runtime's docs: they run before the graph is partitioned, so
    the file suits every runtime) and keep node names. OpenVINO does not remove the Transpose pairs that a
    graph written in NHWC, as BirdNET's rebuild is, puts around each conv: on BirdNET v2.4 (153 -> 15 Transposes)
    the raw export ran 3-4x slower in OpenVINO than the simplified one (36 chunks, 2 threads: 3.3 vs 0.74 s, best
    of 4), while ONNX Runtime does the same rewrites itself when it loads a file.
    """
    ort = import_backend("onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    try:
        ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped errors
        raise BirdclefError(f"{src}: ONNX Runtime cannot load it to simplify it ({type(exc).__name__}: {exc})") from exc


def frontend_boundary(path: Path) -> tuple[list[str], list[str]]:
    """(front-end node names, tensor names where the front end hands over to the CNNs) of an ONNX file."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    scope = f"/{FRONTEND_SCOPE}."
    inside = {n.name for n in graph.node if n.name.startswith(scope)}
    produced = {out: n.name for n in graph.node if n.name in inside for out in n.output}
    consumers = {inp for n in graph.node if n.name not in inside for inp in n.input}
    return sorted(inside), [t for t in produced if t in consumers]


def _calibration_windows(recordings: Sequence[Recording], sample_rate: int, window_s: float) -> np.ndarray:
    """(N, samples) windows of real audio for int8 calibration (at most CALIBRATION_WINDOWS)."""
    windows = []
    for rec in recordings:
        wave = rec.load(sample_rate)
        windows.append(context_windows(wave, sample_rate, row_count(len(wave), sample_rate), window_s))
        if sum(len(w) for w in windows) >= CALIBRATION_WINDOWS:
            break
    return np.concatenate(windows)[:CALIBRATION_WINDOWS]


def quantize_onnx(src: Path, dst: Path, windows: np.ndarray) -> None:
    """Static int8 (QDQ, per-channel weights) of every CNN op; the front-end nodes stay float32."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"wave": windows[i : i + 12]} for i in range(0, len(windows), 12)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    excluded, _ = frontend_boundary(src)
    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)


def to_openvino(src: Path, dst: Path, precision: str, windows: np.ndarray | None) -> None:
    """Convert the ONNX file to OpenVINO IR (float32 weights); int8 through nncf with the front end ignored."""
    ov = import_backend("openvino")
    model = ov.convert_model(str(src))
    if precision == "int8":
        import nncf

        nncf.set_log_level(logging.ERROR)
        dataset = nncf.Dataset([windows[i : i + 12] for i in range(0, len(windows), 12)])
        ignored = nncf.IgnoredScope(patterns=[rf"^/{FRONTEND_SCOPE}\..*"], validate=False)
        model = nncf.quantize(model, dataset, subset_size=len(windows), ignored_scope=ignored)
    ov.save_model(model, str(dst), compress_to_fp16=False)


def _metadata(predictor: TorchPredictor, format: str, precision: str, frontend_outputs: list[str]) -> dict:
    runs = [{"path": str(e.path.resolve()), "window_s": e.window_s, "checkpoints": [str(p.resolve()) for p in e.checkpoints],
             "backbone": e.config.model.backbone, "head": e.config.model.head,
             "frontend": config_to_dict(e.config.model.frontend)} for e in predictor.ensembles]
    return {"kind": EXPORTED, "format": format, "precision": precision, "classes": predictor.classes,
            "sample_rate": predictor.sample_rate, "row_window_s": ROW_WINDOW_S,
            "input_window_s": max(r["window_s"] for r in runs), "runs": runs,
            "weights": predictor.weights.tolist(), "infer": config_to_dict(predictor.config),
            "frontend_outputs": frontend_outputs, "opset": OPSET, "birdclef_version": birdclef.__version__,
            "torch_version": torch.__version__, "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def _check_out(out: Path) -> None:
    if out.exists() and not (out.is_dir() and (not any(out.iterdir()) or (out / METADATA).is_file())):
        raise BirdclefError(f"{out} exists and is not an exported model folder; choose another --out")


def _write_graph(predictor: TorchPredictor, stage: Path, format: str, precision: str,
                 calibration: list[Recording]) -> list[str]:
    """Export, convert and quantize into `stage`; returns the front-end output tensor names."""
    onnx_path = stage / ("model.onnx" if format == "onnx" and precision != "int8" else "fp32.onnx")
    names = export_onnx(build_graph(predictor), onnx_path)
    windows = None
    if precision == "int8":
        windows = _calibration_windows(calibration, predictor.sample_rate, max(e.window_s for e in predictor.ensembles))
    if format == "onnx" and precision == "int8":
        quantize_onnx(onnx_path, stage / "model.onnx", windows)
    if format == "openvino":
        to_openvino(onnx_path, stage / "model.xml", precision, windows)
    if onnx_path.name == "fp32.onnx":
        onnx_path.unlink()
    return names


def speed_check(model_dir: Path, windows: np.ndarray, threads: int | None) -> dict:
    """Median seconds of one batch of `windows` through a bf16 model folder, in bf16 and in fp32.

    Returns:
        ``{"windows", "bf16_s", "fp32_s", "ratio"}`` (ratio = bf16_s / fp32_s; above 1: bf16 is slower here).
    """
    batch = np.ascontiguousarray(windows[:SPEED_WINDOWS], dtype=np.float32)
    times = {}
    for precision in ("bf16", "fp32"):
        graph = ExportedPredictor(model_dir, threads=threads, precision=precision).graph
        times[precision] = median_time(lambda: graph(batch), SPEED_REPEATS, warmup=True)
    return {"windows": len(batch), "bf16_s": times["bf16"], "fp32_s": times["fp32"],
            "ratio": times["bf16"] / times["fp32"]}


def speed_note(speed: dict) -> str:
    """The report's remark on a bf16 timing (a warning when bf16 was slower than fp32)."""
    timing = f"{speed['bf16_s']:.3f} s vs fp32 {speed['fp32_s']:.3f} s for {speed['windows']} windows"
    if speed["ratio"] > 1:
        return (f"WARNING: bf16 ran {speed['ratio']:.2f}x slower than fp32 on this CPU ({timing}): bf16 is only "
                "faster on some CPUs (AMX); export --precision fp32 or int8 for this machine, or compare with `birdclef plan`")
    return f"bf16 ran {1 / speed['ratio']:.2f}x faster than fp32 on this CPU ({timing})"


def _recording_windows(rec: Recording, predictor: TorchPredictor) -> np.ndarray:
    wave = rec.load(predictor.sample_rate)
    window_s = max(e.window_s for e in predictor.ensembles)
    return context_windows(wave, predictor.sample_rate, row_count(len(wave), predictor.sample_rate), window_s)


def _choose_audio(runs: Sequence[str | Path], parity_audio: str | Path | None, parity_count: int,
                  precision: str) -> tuple[ParityAudio, list[Recording], list[Recording], list[str]]:
    """(source, parity recordings, calibration recordings, notes); see :mod:`birdclef.export.sources`."""
    audio = find_audio(Path(parity_audio) if parity_audio else None, [Path(r) for r in runs])
    scored, calibration, note = split_recordings(audio, parity_count, calibrate=precision == "int8")
    return audio, scored, calibration, [note] if note else []


def export_model(runs: Sequence[str | Path], weights: Sequence[float] | None = None, format: str = "onnx",
                 precision: str = "fp32", out: str | Path = "model", parity_audio: str | Path | None = None,
                 parity_count: int = DEFAULT_FILES, force: bool = False, config: InferConfig | None = None,
                 threads: int | None = None) -> ExportReport:
    """Export runs (their finished folds) as one graph, check parity on real audio, write `out`.

    Args:
        runs: run folders (or best.pt files); several runs make a blend.
        weights: blend weights of `runs` (normalised; default equal), stored in the metadata.
        format: onnx | openvino.
        precision: fp32 | bf16 (OpenVINO) | int8.
        out: the model folder to write (replaced if it is an earlier export).
        parity_audio: folder of real recordings; default the first run's own data (its dataset's
            test or train soundscapes, or its training cache; :mod:`birdclef.export.sources`).
        parity_count: how many recordings (sorted) parity scores; int8 calibrates on as many others
            (a smaller source is split in two, never shared).
        force: write even when the parity check fails (the metadata records it).
        config: post-processing stored with the model and used in the parity check; default the
            first run's ``infer`` section.
        threads: runtime threads during the parity check.

    Returns:
        The report (parity numbers, files written).

    Raises:
        ParityError: outside ``TOLERANCES[precision]`` (max |dprob|, |dAUC|) without `force`; `out`
            is untouched.
        BirdclefError: bad target (see :func:`check_target`), runs, `out`; no parity audio (none
            given and the runs record none), or too little of it for int8.
    """
    started, out = time.perf_counter(), Path(out)
    check_target(format, precision)
    _check_out(out)
    audio, scored, calibration, notes = _choose_audio(runs, parity_audio, parity_count, precision)
    predictor = TorchPredictor(runs, weights, config, device="cpu")
    if any(part.unscored for part in predictor.parts()):  # one graph has one class list for every run
        raise BirdclefError("export: the runs score different classes (a taxon specialist and a full run?); export "
                            "each run on its own, and blend a specialist at prediction time (`birdclef predict --run "
                            "FULL --run SPECIALIST`)")
    predictor.config = config or predictor.ensembles[0].config.infer
    stage = out.with_name(f".{out.name}.partial")
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    try:
        meta = _metadata(predictor, format, precision, _write_graph(predictor, stage, format, precision, calibration))
        meta.update(parity_audio=audio.origin, calibration=[r.name for r in calibration])
        write_json_atomic(meta, stage / METADATA)
        exported = ExportedPredictor(stage, threads=threads, config=predictor.config)
        parity = check_parity(scored, predictor, exported, predictor.classes, predictor.weights,
                              predictor.config, TOLERANCES[precision])
        report = ExportReport(out, format, precision, parity, written=False, forced=force, audio=audio.origin,
                              calibration=meta["calibration"], notes=notes)
        if precision == "bf16":
            report.speed = speed_check(stage, _recording_windows(scored[0], predictor), threads)
            report.notes.append(speed_note(report.speed))
        report.export_s = time.perf_counter() - started
        if not parity.passed and not force:
            raise ParityError(report)
        write_json_atomic({**meta, "parity": parity.to_dict(), "forced": force and not parity.passed,
                           "speed": report.speed, "notes": report.notes}, stage / METADATA)
        shutil.rmtree(out, ignore_errors=True)
        stage.rename(out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    report.written, report.files = True, sorted(p.name for p in out.iterdir())
    return report
