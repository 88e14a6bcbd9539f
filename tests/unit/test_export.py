"""Export: the export-friendly front end, the fused graph, parity per format / precision, refusal, runtime, plan."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SR, chirp, noise, write_ogg

from birdclef.config import FrontendConfig, InferConfig, load_config
from birdclef.errors import BirdclefError
from birdclef.export import export as export_mod
from birdclef.export.export import ParityError, build_graph, check_target, export_model
from birdclef.export import plan as plan_mod
from birdclef.export import runtime as runtime_mod
from birdclef.export.graph import ExportLogMel, split_fft_size
from birdclef.export.parity import TOLERANCES, Tolerance
from birdclef.export.plan import Candidate, bf16_notes, plan_budget
from birdclef.export.runtime import (BackendUnavailableError, ExportedPredictor, OpenVinoGraph, cpu_supports_bf16,
                                     import_backend, source_runs)
from birdclef.features.mel import LogMel
from birdclef.infer.base import context_windows, row_count
from birdclef.infer.job import predict_to_csv
from birdclef.infer.predict import TorchPredictor
from birdclef.models import create_model, save_checkpoint

CLASSES = ["aaa", "bbb", "ccc", "ddd"]
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]
RAW = InferConfig(smoothing=False, power_adjust=False)


def calibrate_batchnorm(model: torch.nn.Module, seed: int) -> None:
    """Set BatchNorm statistics from synthetic audio, so a random network's scores differ between rows.

    A freshly initialised backbone maps every input to almost the same features (all rows score
    0.49 +- 0.001); with data statistics its features -- and scores -- spread like a trained model's,
    which is what the AUC parity gate needs to be meaningful.
    """
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    waves = torch.from_numpy(np.stack([soundscape(seed * 10 + i, 5.0) for i in range(16)]))
    model.backbone.train()
    with torch.no_grad():
        model.forward_backbone(model.frontend(waves))
    model.eval()


def make_run(root: Path, folds: int, seed: int, classes=CLASSES, extra=()) -> Path:
    """A run folder of tiny random models with data-calibrated BatchNorm (see calibrate_batchnorm)."""
    config = load_config(None, TINY + list(extra))
    for fold in range(folds):
        torch.manual_seed(seed * 100 + fold)
        model = create_model(config.model, len(classes))
        calibrate_batchnorm(model, seed * 100 + fold)
        save_checkpoint(root / f"fold{fold}" / "best.pt", model, config, list(classes), epoch=0, score=0.5)
        (root / f"fold{fold}" / "done.json").write_text(json.dumps({"fold": fold}))
    return root


def soundscape(seed: int, duration_s: float = 20.0) -> np.ndarray:
    """Noise with chirps of different pitch in different 5 s rows, so rows score differently."""
    rng = np.random.default_rng(seed)
    wave = noise(duration_s, seed=seed, level=0.02)
    for start in rng.uniform(0, duration_s - 2.0, size=4):
        f0 = float(rng.uniform(500, 6_000))
        call = chirp(1.5, f0, f0 * 1.5, noise=0.0) * float(rng.uniform(0.05, 0.8))
        begin = int(start * SR)
        wave[begin : begin + len(call)] += call
    return wave


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export")
    for i in range(6):
        write_ogg(root / "soundscapes" / f"SC_{i}.ogg", soundscape(i))
    make_run(root / "a", 2, seed=1)
    make_run(root / "b", 1, seed=2, classes=CLASSES[::-1], extra=["data.window_s=7"])
    return root


def installed_targets() -> list:
    targets = [("onnx", "fp32"), ("openvino", "fp32"), ("openvino", "bf16"), ("onnx", "int8"), ("openvino", "int8")]
    return [pytest.param(f, p, id=f"{f}-{p}") for f, p in targets]


def skip_unless_target(format: str, precision: str) -> None:
    try:
        check_target(format, precision)
    except BirdclefError as exc:  # backend, nncf or CPU feature missing on this machine
        pytest.skip(f"{format}/{precision} not available here: {exc}")


@pytest.mark.parametrize("cfg", [
    FrontendConfig(n_mels=32, n_fft=512, hop_length=256),
    replace(FrontendConfig.preset("baseline"), image_size=256),
    replace(FrontendConfig.preset("v3"), image_size=256),
    FrontendConfig(n_fft=1_000, hop_length=300, n_mels=40, power=1.0, top_db=None),
], ids=["tiny", "baseline-256", "v3-256", "odd-power1"])
def test_export_logmel_matches_logmel(cfg: FrontendConfig):
    wave = torch.from_numpy(np.stack([soundscape(0, 5.0), soundscape(1, 5.0), np.zeros(5 * SR, np.float32)]))
    expected = LogMel(cfg)(wave)
    got = ExportLogMel(cfg, 5 * SR)(wave)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_split_fft_size_factors_n_fft():
    assert split_fft_size(1024) == (32, 32) and split_fft_size(2048) == (32, 64)
    assert split_fft_size(1000) == (25, 40) and split_fft_size(17) == (1, 17)


def test_fused_module_equals_torch_predictor_per_run(workdir: Path):
    predictor = TorchPredictor([workdir / "a", workdir / "b"], [0.75, 0.25], RAW, device="cpu")
    wave = soundscape(3)
    windows = context_windows(wave, SR, row_count(len(wave), SR), 7.0)
    with torch.no_grad():
        fused = build_graph(predictor)(torch.from_numpy(windows)).numpy()  # (W, R, K)
    expected = np.stack(predictor.predict_runs(wave), axis=1)
    np.testing.assert_allclose(fused, expected, atol=1e-5)


def onnx_fp32(workdir: Path) -> Path:
    """The blended ONNX fp32 export of the workdir's runs (made once per module)."""
    out = workdir / "model-onnx-fp32"
    if not out.is_dir():
        export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "onnx", "fp32", out,
                     parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
    return out


@pytest.mark.parametrize("format", ["onnx", "openvino"])
def test_fp32_export_matches_torch(workdir: Path, format: str):
    skip_unless_target(format, "fp32")
    out = workdir / f"model-{format}-fp32"
    report = export_model([workdir / "a", workdir / "b"], [0.75, 0.25], format, "fp32", out,
                          parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
    assert report.written and report.parity.passed and report.parity.n_rows == 12
    assert report.parity.max_abs_diff < 1e-4 and report.parity.prob_always  # fp32 is float rounding only
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["classes"] == CLASSES and meta["weights"] == [0.75, 0.25] and meta["input_window_s"] == 7.0
    assert meta["parity"]["passed"] and meta["calibration"] == [] and not list(workdir.glob(".*.partial"))
    wave = soundscape(5, 17.0)
    torch_probs = TorchPredictor([workdir / "a", workdir / "b"], [0.75, 0.25], RAW, device="cpu").predict_file(wave)
    assert np.abs(ExportedPredictor(out, threads=1).predict_file(wave) - torch_probs).max() < 1e-4


@pytest.mark.parametrize("format, precision", [("openvino", "bf16"), ("onnx", "int8"), ("openvino", "int8")],
                         ids=["openvino-bf16", "onnx-int8", "openvino-int8"])
def test_reduced_precision_export_runs_and_records_parity(tmp_path: Path, workdir: Path, format: str, precision: str):
    """bf16 / int8 rounding differs between CPUs: the test checks what the export promises on every one
    (it runs, it records its parity numbers, int8 never calibrates on what it scores), not a verdict."""
    skip_unless_target(format, precision)
    out = tmp_path / "model"
    report = export_model([workdir / "a", workdir / "b"], [0.75, 0.25], format, precision, out,
                          parity_audio=workdir / "soundscapes", parity_count=3, config=RAW, force=True)
    meta = json.loads((out / "metadata.json").read_text())
    assert report.written and meta["precision"] == precision and report.parity.n_rows == 12
    assert meta["parity"] == json.loads(json.dumps(report.parity.to_dict()))
    assert meta["forced"] == (not report.parity.passed)
    assert meta["parity_audio"] == str(workdir / "soundscapes")
    if precision == "int8":  # 6 files: parity on the first 3, calibration on the other 3
        assert meta["calibration"] and not set(meta["calibration"]) & set(meta["parity"]["files"])
        assert len(meta["parity"]["files"]) == 3 and len(meta["calibration"]) == 3
    else:
        assert set(meta["speed"]) == {"windows", "bf16_s", "fp32_s", "ratio"} and meta["speed"]["ratio"] > 0
        assert any("bf16 ran" in note for note in meta["notes"])
    probs = ExportedPredictor(out, threads=1).predict_file(soundscape(5, 17.0))
    assert probs.shape == (4, len(CLASSES)) and np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()


def test_fused_folds_equal_average_of_separate_folds(tmp_path: Path, workdir: Path):
    skip_unless_target("onnx", "fp32")
    run = make_run(tmp_path / "three", 3, seed=7)
    fused = export_model([run], format="onnx", out=tmp_path / "fused", parity_audio=workdir / "soundscapes",
                         parity_count=1, config=RAW)
    assert fused.parity.passed
    separate = [export_model([run / f"fold{k}" / "best.pt"], format="onnx", out=tmp_path / f"fold{k}",
                             parity_audio=workdir / "soundscapes", parity_count=1, config=RAW) for k in range(3)]
    wave = soundscape(4)
    fused_probs = ExportedPredictor(fused.out).predict_runs(wave)[0]
    mean_probs = np.mean([ExportedPredictor(rep.out).predict_runs(wave)[0] for rep in separate], axis=0)
    np.testing.assert_allclose(fused_probs, mean_probs, atol=1e-5)


class ShiftedPredictor(ExportedPredictor):
    """An exported model whose probabilities are all 1e-3 higher: same ranking, so the same AUC."""

    def predict_runs(self, wave: np.ndarray) -> list[np.ndarray]:
        return [p + 1e-3 for p in super().predict_runs(wave)]


def test_gate_refuses_perturbed_outputs_writes_nothing_and_force_writes(tmp_path: Path, workdir: Path, monkeypatch):
    skip_unless_target("onnx", "fp32")
    out = tmp_path / "model"
    export_model([workdir / "a"], format="onnx", out=out, parity_audio=workdir / "soundscapes", parity_count=2)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setattr(export_mod, "ExportedPredictor", ShiftedPredictor)
    with pytest.raises(ParityError, match=r"not written.*max\|dprob\| > 0.0001") as refused:
        export_model([workdir / "b"], format="onnx", out=out, parity_audio=workdir / "soundscapes", parity_count=2)
    parity = refused.value.report.parity
    assert parity.auc_torch is not None and parity.auc_diff == 0  # the AUC alone would have let it through
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # the earlier export is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no partial folder left behind
    with pytest.raises(ParityError):
        export_model([workdir / "a"], format="onnx", out=tmp_path / "new", parity_audio=workdir / "soundscapes",
                     parity_count=1)
    assert not (tmp_path / "new").exists()
    forced = export_model([workdir / "b"], format="onnx", out=out, parity_audio=workdir / "soundscapes",
                          parity_count=1, force=True)
    meta = json.loads((out / "metadata.json").read_text())
    assert forced.written and meta["forced"] and not meta["parity"]["passed"]


def test_bad_targets_are_refused_before_any_work():
    with pytest.raises(BirdclefError, match="unknown export format"):
        check_target("tflite", "fp32")
    with pytest.raises(BirdclefError, match="unknown precision"):
        check_target("onnx", "fp16")
    try:
        import_backend("onnx")
    except BackendUnavailableError:
        pytest.skip("onnxruntime not installed")
    with pytest.raises(BirdclefError, match="--format openvino"):
        check_target("onnx", "bf16")


def test_missing_backend_names_the_pip_package(monkeypatch):
    import importlib

    real = importlib.import_module

    def fake(name: str, *args):
        if name == "openvino":
            raise ImportError("No module named 'openvino'")
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(BackendUnavailableError, match="pip install openvino"):
        import_backend("openvino")
    assert not cpu_supports_bf16()


def test_exported_model_runs_without_torch(workdir: Path):
    skip_unless_target("onnx", "fp32")
    out = onnx_fp32(workdir)
    code = ("import sys, numpy as np; from birdclef.export.runtime import ExportedPredictor; "
            f"p = ExportedPredictor({str(out)!r}); probs = p.predict_file(np.zeros(12 * 32000, np.float32)); "
            "print(probs.shape, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["(3,", "4)", "False"]


def test_source_runs_points_back_to_the_checkpoints(tmp_path: Path, workdir: Path):
    skip_unless_target("onnx", "fp32")
    run = make_run(tmp_path / "run", 1, seed=4)
    export_model([run], format="onnx", out=tmp_path / "model", parity_audio=workdir / "soundscapes", parity_count=1)
    assert source_runs(tmp_path / "model") == ([run.resolve()], [1.0])
    shutil.rmtree(run)
    with pytest.raises(BirdclefError, match="not available here"):
        source_runs(tmp_path / "model")


def test_batch_job_with_exported_model_matches_torch(tmp_path: Path, workdir: Path):
    skip_unless_target("onnx", "fp32")
    out = onnx_fp32(workdir)
    cfg = InferConfig()  # with post-processing, on both sides
    exported = predict_to_csv(workdir / "soundscapes", ExportedPredictor(out, config=cfg), tmp_path / "x.csv", progress=False)
    torch_side = TorchPredictor([workdir / "a", workdir / "b"], [0.75, 0.25], cfg, device="cpu")
    reference = predict_to_csv(workdir / "soundscapes", torch_side, tmp_path / "t.csv", progress=False)
    import pandas as pd

    x, t = pd.read_csv(exported.out), pd.read_csv(reference.out)
    assert list(x.columns) == list(t.columns) and x["row_id"].tolist() == t["row_id"].tolist()
    assert np.abs(x[CLASSES].to_numpy() - t[CLASSES].to_numpy()).max() < 1e-4


def test_plan_budget_scales_measured_times_and_judges_fit(workdir: Path, monkeypatch):
    skip_unless_target("onnx", "fp32")
    out = onnx_fp32(workdir)
    audio = workdir / "soundscapes" / "SC_0.ogg"  # 20 s: one call times a third of an audio minute

    def fixed_time(fn, repeats: int, warmup: bool = False) -> float:
        fn()  # still runs the model: the plan must work end to end
        return 0.1

    monkeypatch.setattr(plan_mod, "median_time", fixed_time)
    roomy = plan_budget([out], files=10, minutes=60, cores=4, audio=audio, backends=["onnx"], threads=2, repeats=1)
    tight = plan_budget([out], files=700, minutes=4, cores=4, audio=audio, backends=["onnx"], threads=2, repeats=1)
    cand = roomy.candidates[0]
    assert cand.decode_s == pytest.approx(0.3) and cand.predict_s == pytest.approx(0.3)  # 0.1 s per 20 s
    assert cand.total_s == pytest.approx(10 * 0.6 * 2 / 4 * 1.25)
    assert cand.fits and tight.candidates[0].total_s == pytest.approx(262.5) and not tight.candidates[0].fits
    assert out.name in str(roomy) and "yes" in str(roomy) and "no" in str(tight)


class FakeRuns:
    """A RunPredictor returning fixed (W, K) probabilities per call, in file order."""

    sample_rate = SR

    def __init__(self, per_file: list[np.ndarray]):
        self.per_file, self.calls = per_file, 0

    def predict_runs(self, wave: np.ndarray) -> list[np.ndarray]:
        self.calls += 1
        return [self.per_file[self.calls - 1]]


def parity_folder(root: Path, n_files: int) -> list[Path]:
    return [write_ogg(root / "test_soundscapes" / f"P_{i}.ogg", noise(10.0, seed=i)) for i in range(n_files)]


def labelled_parity_folder(root: Path, **labels: list[int]) -> list[Path]:
    """Two 10 s soundscapes (rows P_0_5, P_0_10, P_1_5, P_1_10) and a solution.csv beside their folder."""
    import pandas as pd

    files = parity_folder(root, 2)
    ids = [f"P_{i}_{end}" for i in range(2) for end in (5, 10)]
    pd.DataFrame({"row_id": ids, **labels}).to_csv(root / "solution.csv", index=False)
    return files


def test_parity_gate_uses_pseudo_labels_and_sees_swapped_rows(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = parity_folder(tmp_path, 5)
    rng = np.random.default_rng(0)
    torch_probs = [rng.uniform(0, 1, (2, 3)) for _ in files]  # 10 rows, 1 pseudo-positive per class
    same = check_parity(files, FakeRuns(torch_probs), FakeRuns([p + 1e-7 for p in torch_probs]), ["a", "b", "c"],
                        np.ones(1), RAW, Tolerance(0.001, 1e-4, False))
    assert same.passed and same.auc_diff == 0 and same.labels.startswith("pseudo")
    swapped = [p.copy() for p in torch_probs]
    top = int(np.argmax(np.concatenate(torch_probs)[:, 0]))
    swapped[top // 2][top % 2, 0] = 0.0  # class a's best row drops to the bottom
    moved = check_parity(files, FakeRuns(torch_probs), FakeRuns(swapped), ["a", "b", "c"], np.ones(1), RAW,
                         Tolerance(0.001, 1.0, False))
    assert not moved.passed and moved.auc_diff < -0.1


def test_parity_gate_falls_back_to_max_dprob_for_constant_models(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = parity_folder(tmp_path, 2)
    flat = [np.full((2, 3), 0.5) for _ in files]
    close = check_parity(files, FakeRuns(flat), FakeRuns([p + 1e-6 for p in flat]), ["a", "b", "c"], np.ones(1), RAW,
                         Tolerance(0.001, 1e-4, False))
    far = check_parity(files, FakeRuns(flat), FakeRuns([p + 1e-2 for p in flat]), ["a", "b", "c"], np.ones(1), RAW,
                       Tolerance(0.001, 1e-4, False))
    assert close.passed and close.auc_torch is None and not far.passed


def test_parity_gate_prefers_true_labels_from_solution_csv(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 1], b=[0, 1, 0, 0])
    probs = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.1, 0.3], [0.7, 0.2]])]
    result = check_parity(files, FakeRuns(probs), FakeRuns(probs), ["a", "b"], np.ones(1), RAW, TOLERANCES["int8"])
    assert result.labels.endswith("solution.csv") and result.auc_torch == pytest.approx(1.0) and result.passed


def test_parity_gate_skips_near_constant_classes_with_true_labels(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 1], b=[0, 1, 0, 0])
    # class a ranks clearly; class b's scores span 1e-4 (< MIN_SPREAD), an untrained output
    probs = [np.array([[0.9, 0.5], [0.2, 0.5001]]), np.array([[0.1, 0.50005], [0.7, 0.5]])]
    nudged = [np.array([[0.9, 0.5002], [0.2, 0.5001]]), probs[1]]  # a 2e-4 rounding change puts b's order off
    result = check_parity(files, FakeRuns(probs), FakeRuns(nudged), ["a", "b"], np.ones(1), RAW, Tolerance(0.001, 1e-2, True))
    # scoring b would give dAUC -1/6 and refuse a harmless export; a alone is unchanged
    assert result.labels.endswith("solution.csv") and result.passed
    assert result.auc_diff == 0 and result.auc_torch == pytest.approx(1.0)
    assert "1 of 2 classes barely vary" in result.notes[0]


def test_fp32_gate_checks_max_dprob_even_when_the_auc_is_unchanged(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = parity_folder(tmp_path, 5)
    rng = np.random.default_rng(1)
    torch_probs = [rng.uniform(0.1, 0.9, (2, 3)) for _ in files]
    shifted = [p + 1e-3 for p in torch_probs]  # same order of every row: the same AUC
    fp32, int8 = (check_parity(files, FakeRuns(torch_probs), FakeRuns(shifted), ["a", "b", "c"], np.ones(1), RAW,
                               TOLERANCES[p]) for p in ("fp32", "int8"))
    assert fp32.auc_torch is not None and fp32.auc_diff == 0
    assert fp32.failures() == ["max|dprob| > 0.0001"] and "FAILED (max|dprob| > 0.0001)" in fp32.summary()
    assert int8.passed  # int8 is judged by the AUC (its max |dprob| is recorded)


@pytest.fixture(scope="module")
def openvino_fp32(workdir: Path) -> Path:
    skip_unless_target("openvino", "fp32")
    out = workdir / "model-openvino-streams"
    export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "openvino", "fp32", out,
                 parity_audio=workdir / "soundscapes", parity_count=1, config=RAW)
    return out


def stream_windows() -> np.ndarray:
    wave = soundscape(7, 25.0)
    return context_windows(wave, SR, row_count(len(wave), SR), 7.0)  # 5 windows -> chunks of 2, 2, 1


def test_openvino_streams_split_a_batch_without_changing_results(openvino_fp32: Path):
    windows = stream_windows()
    one, three = ExportedPredictor(openvino_fp32, threads=3, streams=1), ExportedPredictor(openvino_fp32, threads=3, streams=3)
    assert one.graph.streams == 1 and three.graph.streams == 3
    np.testing.assert_allclose(three.predict_windows(windows), one.predict_windows(windows), atol=1e-5)
    np.testing.assert_allclose(three.predict_windows(windows[:1]), one.predict_windows(windows[:1]), atol=1e-5)
    assert ExportedPredictor(openvino_fp32, threads=8, streams=16).graph.streams == 8  # never more streams than threads


def test_openvino_static_shapes_pad_and_trim_to_the_dynamic_result(openvino_fp32: Path, monkeypatch):
    """``static``: one graph per batch length (5 windows on 2 streams: two of 3 rows, one padded), the dynamic
    graph past STATIC_SHAPES lengths; the bf16 split (compiled float32 here) reshapes both stages."""
    windows = stream_windows()
    dynamic = OpenVinoGraph(openvino_fp32 / "model.xml", threads=2, streams=2)(windows)
    static = OpenVinoGraph(openvino_fp32 / "model.xml", threads=2, streams=2, static=True)
    for n in (5, 4, 1, 3, 2):  # lengths 3, 2, 1, 2, 1 per stream: three compiled, the rest reused
        np.testing.assert_allclose(static(windows[:n]), dynamic[:n], atol=1e-5)
    assert sorted(static._shaped) == [1, 2, 3]
    monkeypatch.setattr(runtime_mod, "STATIC_SHAPES", 3)
    np.testing.assert_allclose(static(np.concatenate([windows] * 2)[:9]), np.concatenate([dynamic] * 2)[:9], atol=1e-5)
    assert sorted(static._shaped) == [1, 2, 3]  # 5 rows per stream ran on the dynamic graph
    monkeypatch.setattr(runtime_mod, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(OpenVinoGraph, "_compile", lambda self, model, precision: self.core.compile_model(
        model, "CPU", {**self.config, "INFERENCE_PRECISION_HINT": "f32"}))
    split = OpenVinoGraph(openvino_fp32 / "model.xml", threads=2, precision="bf16", streams=1, static=True)
    np.testing.assert_allclose(split(windows), dynamic, atol=1e-5)
    assert len(split._shaped[5][0]) == 2


def test_bf16_split_graph_composes_to_the_whole_graph(openvino_fp32: Path, monkeypatch):
    """The bf16 path cuts the graph after the front end and runs two stages per stream; compiled in
    float32 (so no CPU's bf16 rounding enters) the stages must give the whole graph's result."""
    monkeypatch.setattr(runtime_mod, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(OpenVinoGraph, "_compile", lambda self, model, precision: self.core.compile_model(
        model, "CPU", {**self.config, "INFERENCE_PRECISION_HINT": "f32"}))
    windows = stream_windows()
    whole = OpenVinoGraph(openvino_fp32 / "model.xml", threads=2, precision="fp32", streams=1)(windows)
    for streams in (1, 2):
        split = OpenVinoGraph(openvino_fp32 / "model.xml", threads=2, precision="bf16", streams=streams)
        assert len(split.stages) == 2
        np.testing.assert_allclose(split(windows), whole, atol=1e-5)


def test_parity_gate_falls_back_when_only_unlabelled_classes_vary(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 0], b=[0, 0, 0, 0])
    # a has a positive but flat scores; b varies but has no positive: no class can be scored by AUC
    probs = [np.array([[0.5, 0.9], [0.5, 0.1]]), np.array([[0.5, 0.4], [0.5, 0.6]])]
    result = check_parity(files, FakeRuns(probs), FakeRuns(probs), ["a", "b"], np.ones(1), RAW, TOLERANCES["int8"])
    assert result.passed and result.auc_torch is None and result.prob_tolerance == TOLERANCES["int8"].prob


def test_plan_times_a_bf16_model_also_as_fp32_and_says_when_bf16_was_slower(tmp_path: Path, workdir: Path):
    skip_unless_target("openvino", "fp32")
    model = export_model([workdir / "a"], format="openvino", out=tmp_path / "bf16-model",
                         parity_audio=workdir / "soundscapes", parity_count=1, config=RAW).out
    meta = json.loads((model / "metadata.json").read_text())
    (model / "metadata.json").write_text(json.dumps({**meta, "precision": "bf16"}))  # a bf16 folder: same IR
    assert [(b, p) for _, b, p, _ in plan_mod._candidates([model], None)] == [("openvino", "bf16"), ("openvino", "fp32")]
    slow = [Candidate("m", "openvino", "bf16", predict_s=2.0), Candidate("m", "openvino", "fp32", predict_s=1.0)]
    assert bf16_notes(slow) == ["m: bf16 was measured 2.00x slower than fp32 on this CPU (bf16 is only faster on "
                                "some CPUs, e.g. with AMX); run it as fp32 or export int8"]
    assert bf16_notes([replace(slow[0], predict_s=0.5), slow[1]]) == []
    with pytest.raises(BirdclefError, match="only a bf16 model can run as fp32"):
        ExportedPredictor(onnx_fp32(workdir), precision="bf16")


def test_bf16_speed_note_warns_only_when_bf16_was_slower():
    slower = export_mod.speed_note({"windows": 12, "bf16_s": 0.4, "fp32_s": 0.2, "ratio": 2.0})
    faster = export_mod.speed_note({"windows": 12, "bf16_s": 0.1, "fp32_s": 0.2, "ratio": 0.5})
    assert slower.startswith("WARNING: bf16 ran 2.00x slower than fp32") and "--precision fp32 or int8" in slower
    assert faster.startswith("bf16 ran 2.00x faster") and "WARNING" not in faster


def run_with_data(root: Path, record: dict | None = None) -> Path:
    """A one-fold run folder; `record` is written as its data.json (what `birdclef train` records)."""
    run = make_run(root / "run", 1, seed=5)
    if record is not None:
        (run / "data.json").write_text(json.dumps(record))
    return run


def test_parity_audio_comes_from_the_runs_recorded_dataset(tmp_path: Path):
    from birdclef.export.sources import find_audio

    data = tmp_path / "data"
    train = [write_ogg(data / "train_soundscapes" / f"T_{i}.ogg", soundscape(i, 10.0)) for i in range(2)]
    run = run_with_data(tmp_path, {"data_root": str(data), "cache": str(tmp_path / "no-cache")})
    audio = find_audio(None, [run / "fold0" / "best.pt"])  # a checkpoint file finds its run folder
    assert audio.origin == str(data / "train_soundscapes") and [r.path for r in audio.recordings] == train
    test = write_ogg(data / "test_soundscapes" / "S_0.ogg", soundscape(3, 10.0))
    assert [r.path for r in find_audio(None, [run]).recordings] == [test]  # test soundscapes come first
    other = write_ogg(tmp_path / "mine" / "M.ogg", soundscape(4, 10.0))
    assert [r.path for r in find_audio(tmp_path / "mine", [run]).recordings] == [other]  # --parity-audio wins


def test_export_checks_parity_on_the_runs_training_cache(tmp_path: Path):
    from birdclef.data.cache import prepare_cache

    skip_unless_target("onnx", "fp32")
    data = tmp_path / "data"
    names = [f"{c}/XC{i}.ogg" for i, c in enumerate(CLASSES)]
    for i, name in enumerate(names):
        write_ogg(data / "train_audio" / name, soundscape(10 + i, 6.0))
    import pandas as pd

    pd.DataFrame({"primary_label": CLASSES, "filename": names}).to_csv(data / "train.csv", index=False)
    run = run_with_data(tmp_path)  # an older run: no data.json, its cache in the default RUN/cache
    prepare_cache(data, run / "cache", strategy="center", num_workers=1, progress=False)
    report = export_model([run], format="onnx", out=tmp_path / "model", parity_count=1, config=RAW)
    assert report.written and report.audio.startswith(f"training cache {run / 'cache'}")
    assert report.parity.n_rows == 4 and report.parity.files[0].startswith(str(run / "cache") + "#")
    meta = json.loads((tmp_path / "model" / "metadata.json").read_text())
    assert meta["parity_audio"] == report.audio and meta["parity"]["passed"]


def test_export_without_parity_audio_or_run_data_asks_for_it(tmp_path: Path):
    skip_unless_target("onnx", "fp32")
    run = run_with_data(tmp_path)
    with pytest.raises(BirdclefError, match=r"record no dataset .*looked for .*run/data.json, .*run/cache\); pass a folder of real recordings "
                       r"with --parity-audio DIR"):
        export_model([run], format="onnx", out=tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_int8_calibration_recordings_never_overlap_the_parity_ones():
    from birdclef.export.sources import ParityAudio, Recording, split_recordings

    audio = ParityAudio("folder F", [Recording(f"r{i}.ogg", path=Path(f"r{i}.ogg")) for i in range(5)])
    scored, calibration, note = split_recordings(audio, 12, calibrate=True)
    assert [r.name for r in scored] == ["r0.ogg", "r1.ogg", "r2.ogg"] and [r.name for r in calibration] == ["r3.ogg", "r4.ogg"]
    assert note == ("folder F has 5 recordings, fewer than 12 for parity + 12 for calibration: parity on the first 3, "
                    "calibration on the other 2")
    scored, calibration, note = split_recordings(audio, 2, calibrate=True)
    assert [r.name for r in scored] == ["r0.ogg", "r1.ogg"] and [r.name for r in calibration] == ["r2.ogg", "r3.ogg"]
    assert note == "" and split_recordings(audio, 2, calibrate=False)[1] == []
    with pytest.raises(BirdclefError, match="needs at least 2 recordings.*folder F has 1"):
        split_recordings(ParityAudio("folder F", audio.recordings[:1]), 12, calibrate=True)
