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
from birdclef.export.graph import ExportLogMel, split_fft_size
from birdclef.export.plan import plan_budget
from birdclef.export.runtime import (BackendUnavailableError, ExportedPredictor, cpu_supports_bf16, import_backend,
                                     source_runs)
from birdclef.features.mel import LogMel
from birdclef.infer.base import context_windows, row_count
from birdclef.infer.job import predict_to_csv
from birdclef.infer.predict import TorchPredictor
from birdclef.models import create_model, save_checkpoint

CLASSES = ["aaa", "bbb", "ccc", "ddd"]
TINY = ["model.backbone=test_efficientnet", "model.pretrained=false", "model.frontend.n_mels=32",
        "model.frontend.n_fft=512", "model.frontend.hop_length=256", "model.frontend.image_size=null"]
RAW = InferConfig(smoothing=False, power_adjust=False)
PROB_TOLERANCE = {"fp32": 1e-4, "bf16": 3e-2, "int8": 0.3}
"""max |dprob| accepted per precision on top of the export's own AUC gate (0.001 fp32, 0.005 bf16 / int8).
int8 is loose: on these untrained tiny networks activations span little of their int8 range, the
worst case for quantization (still rank correlation > 0.9 with torch)."""


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


@pytest.mark.parametrize("format, precision", installed_targets())
def test_export_matches_torch_within_tolerance(workdir: Path, format: str, precision: str):
    skip_unless_target(format, precision)
    out = workdir / f"model-{format}-{precision}"
    report = export_model([workdir / "a", workdir / "b"], [0.75, 0.25], format, precision, out,
                          parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
    assert report.written and report.parity.passed and report.parity.n_rows == 12
    assert abs(report.parity.auc_diff) <= {"fp32": 0.001}.get(precision, 0.005)
    assert report.parity.max_abs_diff < PROB_TOLERANCE[precision] and report.parity.rank_correlation > 0.9
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["classes"] == CLASSES and meta["weights"] == [0.75, 0.25] and meta["input_window_s"] == 7.0
    assert meta["parity"]["passed"] and not list(workdir.glob(".*.partial"))
    exported = ExportedPredictor(out, threads=1)
    wave = soundscape(5, 17.0)
    torch_probs = TorchPredictor([workdir / "a", workdir / "b"], [0.75, 0.25], RAW, device="cpu").predict_file(wave)
    assert np.abs(exported.predict_file(wave) - torch_probs).max() < PROB_TOLERANCE[precision]


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
    np.testing.assert_allclose(fused_probs, mean_probs, atol=1e-6)


def test_refused_parity_writes_nothing_and_force_writes(tmp_path: Path, workdir: Path, monkeypatch):
    skip_unless_target("onnx", "fp32")
    out = tmp_path / "model"
    export_model([workdir / "a"], format="onnx", out=out, parity_audio=workdir / "soundscapes", parity_count=1)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    monkeypatch.setitem(export_mod.AUC_TOLERANCE, "fp32", -1.0)  # any result now fails the gate
    with pytest.raises(ParityError, match="not written"):
        export_model([workdir / "b"], format="onnx", out=out, parity_audio=workdir / "soundscapes", parity_count=1)
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
    out = workdir / "model-onnx-fp32"
    if not out.is_dir():
        export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "onnx", "fp32", out,
                     parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
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
    out = workdir / "model-onnx-fp32"
    if not out.is_dir():
        export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "onnx", "fp32", out,
                     parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
    cfg = InferConfig()  # with post-processing, on both sides
    exported = predict_to_csv(workdir / "soundscapes", ExportedPredictor(out, config=cfg), tmp_path / "x.csv", progress=False)
    torch_side = TorchPredictor([workdir / "a", workdir / "b"], [0.75, 0.25], cfg, device="cpu")
    reference = predict_to_csv(workdir / "soundscapes", torch_side, tmp_path / "t.csv", progress=False)
    import pandas as pd

    x, t = pd.read_csv(exported.out), pd.read_csv(reference.out)
    assert list(x.columns) == list(t.columns) and x["row_id"].tolist() == t["row_id"].tolist()
    assert np.abs(x[CLASSES].to_numpy() - t[CLASSES].to_numpy()).max() < 1e-4


def test_plan_budget_times_and_judges_fit(workdir: Path):
    skip_unless_target("onnx", "fp32")
    out = workdir / "model-onnx-fp32"
    if not out.is_dir():
        export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "onnx", "fp32", out,
                     parity_audio=workdir / "soundscapes", parity_count=3, config=RAW)
    audio = workdir / "soundscapes" / "SC_0.ogg"
    roomy = plan_budget([out], files=10, minutes=60, cores=4, audio=audio, backends=["onnx"], repeats=1)
    tight = plan_budget([out], files=700, minutes=0.001, cores=4, audio=audio, backends=["onnx"], repeats=1)
    assert roomy.candidates[0].fits and not tight.candidates[0].fits
    cand = roomy.candidates[0]
    assert cand.predict_s > 0 and cand.decode_s > 0
    expected = 10 * (cand.decode_s + cand.predict_s) * roomy.threads / 4 * roomy.margin
    assert cand.total_s == pytest.approx(expected)
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
                        np.ones(1), RAW, tolerance=0.001, prob_tolerance=1e-4)
    assert same.passed and same.auc_diff == 0 and same.labels.startswith("pseudo")
    swapped = [p.copy() for p in torch_probs]
    top = int(np.argmax(np.concatenate(torch_probs)[:, 0]))
    swapped[top // 2][top % 2, 0] = 0.0  # class a's best row drops to the bottom
    moved = check_parity(files, FakeRuns(torch_probs), FakeRuns(swapped), ["a", "b", "c"], np.ones(1), RAW,
                         tolerance=0.001, prob_tolerance=1.0)
    assert not moved.passed and moved.auc_diff < -0.1


def test_parity_gate_falls_back_to_max_dprob_for_constant_models(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = parity_folder(tmp_path, 2)
    flat = [np.full((2, 3), 0.5) for _ in files]
    close = check_parity(files, FakeRuns(flat), FakeRuns([p + 1e-6 for p in flat]), ["a", "b", "c"], np.ones(1), RAW,
                         tolerance=0.001, prob_tolerance=1e-4)
    far = check_parity(files, FakeRuns(flat), FakeRuns([p + 1e-2 for p in flat]), ["a", "b", "c"], np.ones(1), RAW,
                       tolerance=0.001, prob_tolerance=1e-4)
    assert close.passed and close.auc_torch is None and not far.passed


def test_parity_gate_prefers_true_labels_from_solution_csv(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 1], b=[0, 1, 0, 0])
    probs = [np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.1, 0.3], [0.7, 0.2]])]
    result = check_parity(files, FakeRuns(probs), FakeRuns(probs), ["a", "b"], np.ones(1), RAW, 0.001, 1e-4)
    assert result.labels.endswith("solution.csv") and result.auc_torch == pytest.approx(1.0) and result.passed


def test_parity_gate_skips_near_constant_classes_with_true_labels(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 1], b=[0, 1, 0, 0])
    # class a ranks clearly; class b's scores span 1e-4 (< MIN_SPREAD), an untrained output
    probs = [np.array([[0.9, 0.5], [0.2, 0.5001]]), np.array([[0.1, 0.50005], [0.7, 0.5]])]
    nudged = [np.array([[0.9, 0.5002], [0.2, 0.5001]]), probs[1]]  # a 2e-4 rounding change puts b's order off
    result = check_parity(files, FakeRuns(probs), FakeRuns(nudged), ["a", "b"], np.ones(1), RAW, 0.001, 1e-2)
    # scoring b would give dAUC -1/6 and refuse a harmless export; a alone is unchanged
    assert result.labels.endswith("solution.csv") and result.passed
    assert result.auc_diff == 0 and result.auc_torch == pytest.approx(1.0)
    assert "1 of 2 classes barely vary" in result.notes[0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_openvino_streams_split_a_batch_without_changing_results(tmp_path: Path, workdir: Path, precision: str):
    skip_unless_target("openvino", precision)
    out = tmp_path / "model"
    export_model([workdir / "a", workdir / "b"], [0.75, 0.25], "openvino", precision, out,
                 parity_audio=workdir / "soundscapes", parity_count=1, config=RAW)
    wave = soundscape(7, 25.0)
    windows = context_windows(wave, SR, row_count(len(wave), SR), 7.0)  # 5 windows -> chunks of 2, 2, 1
    one, three = ExportedPredictor(out, threads=3, streams=1), ExportedPredictor(out, threads=3, streams=3)
    assert one.graph.streams == 1 and three.graph.streams == 3
    tol = {"fp32": 1e-5, "bf16": 2e-3}[precision]
    np.testing.assert_allclose(three.predict_windows(windows), one.predict_windows(windows), atol=tol)
    np.testing.assert_allclose(three.predict_windows(windows[:1]), one.predict_windows(windows[:1]), atol=tol)
    assert ExportedPredictor(out, threads=8, streams=16).graph.streams == 8  # never more streams than threads


def test_parity_gate_falls_back_when_only_unlabelled_classes_vary(tmp_path: Path):
    from birdclef.export.parity import check_parity

    files = labelled_parity_folder(tmp_path, a=[1, 0, 0, 0], b=[0, 0, 0, 0])
    # a has a positive but flat scores; b varies but has no positive: no class can be scored by AUC
    probs = [np.array([[0.5, 0.9], [0.5, 0.1]]), np.array([[0.5, 0.4], [0.5, 0.6]])]
    result = check_parity(files, FakeRuns(probs), FakeRuns(probs), ["a", "b"], np.ones(1), RAW, 0.001, 1e-4)
    assert result.passed and result.auc_torch is None and result.prob_tolerance == 1e-4
