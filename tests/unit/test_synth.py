"""The synthetic dataset: BirdCLEF layout, exact labels, determinism and species that can be told apart."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from birdclef.audio.io import audio_info, load_audio
from birdclef.data.synth import (
    CALL_KINDS,
    SynthSummary,
    design_species,
    make_babble,
    make_bout,
    make_call,
    synthesize_dataset,
)

SR = 32_000
TINY = {"n_species": 3, "clips_per_species": 2, "n_train_soundscapes": 1, "n_test_soundscapes": 1,
        "soundscape_s": 20.0, "progress": False}
BIRDCLEF_TRAIN_COLUMNS = ["primary_label", "secondary_labels", "type", "filename", "collection", "rating",
                          "latitude", "longitude", "scientific_name", "common_name", "author", "license", "url"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, SynthSummary]:
    out = tmp_path_factory.mktemp("synth") / "tiny"
    return out, synthesize_dataset(out, seed=0, **TINY)


def _band_profile(wave: np.ndarray, edges_hz: np.ndarray) -> np.ndarray:
    """Log energy in each band between consecutive `edges_hz`, normalised to unit length."""
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    bands = np.array([power[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges_hz[:-1], edges_hz[1:])])
    profile = np.log10(bands + 1e-12 * bands.max())
    profile -= profile.mean()
    return profile / np.linalg.norm(profile)


def test_tiny_dataset_has_every_part_of_the_layout(tiny: tuple[Path, SynthSummary]) -> None:
    out, summary = tiny
    for name in ("taxonomy.csv", "train.csv", "solution.csv", "sample_submission.csv", "test_events.csv", "README.md"):
        assert (out / name).is_file(), name
    assert "synthetic" in (out / "README.md").read_text().lower()
    assert [p.name for p in (out / "test_soundscapes").glob("*.ogg")] == ["SYN_TEST_000.ogg"]
    assert len(list((out / "train_soundscapes").glob("*.ogg"))) == 1
    assert (summary.n_species, summary.n_train_clips, summary.n_test_soundscapes) == (3, 6, 1)
    assert summary.seconds_written > 60 + 20 and summary.elapsed_s > 0


def test_train_csv_follows_birdclef_and_every_file_is_a_32khz_ogg(tiny: tuple[Path, SynthSummary]) -> None:
    out, _ = tiny
    train, taxonomy = pd.read_csv(out / "train.csv"), pd.read_csv(out / "taxonomy.csv")
    assert list(train.columns) == BIRDCLEF_TRAIN_COLUMNS
    assert list(taxonomy.columns) == ["primary_label", "inat_taxon_id", "scientific_name", "common_name", "class_name"]
    assert set(taxonomy["class_name"]) <= {"Aves", "Amphibia", "Mammalia", "Insecta"}
    assert train["primary_label"].value_counts().to_dict() == {label: 2 for label in taxonomy["primary_label"]}
    for row in train.itertuples():
        info = audio_info(out / "train_audio" / row.filename)
        assert (info.sample_rate, info.channels) == (SR, 1) and "OGG" in info.format.upper()
        assert 2.0 <= info.duration_s <= 20.01 and row.filename.split("/")[0] == row.primary_label
        secondary = ast.literal_eval(row.secondary_labels)
        assert isinstance(secondary, list) and set(secondary) <= set(taxonomy["primary_label"]) - {row.primary_label}
        assert Path(row.filename).name.startswith(row.collection)
    assert (train["collection"] == "CSA").sum() == 1  # min(2, clips // 4) clips open with speech


def test_solution_rows_columns_and_positives(tiny: tuple[Path, SynthSummary]) -> None:
    out, _ = tiny
    solution, sample = pd.read_csv(out / "solution.csv"), pd.read_csv(out / "sample_submission.csv")
    classes = pd.read_csv(out / "taxonomy.csv")["primary_label"].tolist()
    assert solution["row_id"].tolist() == [f"SYN_TEST_000_{end}" for end in (5, 10, 15, 20)]
    assert list(solution.columns) == ["row_id", *classes] and list(sample.columns) == list(solution.columns)
    assert sample["row_id"].tolist() == solution["row_id"].tolist() and (sample[classes] == 0).all().all()
    assert set(np.unique(solution[classes])) <= {0, 1} and (solution[classes].sum() >= 1).all()
    assert audio_info(out / "test_soundscapes" / "SYN_TEST_000.ogg").frames == 20 * SR


def test_every_event_lies_in_one_window_and_solution_marks_exactly_those(tiny: tuple[Path, SynthSummary]) -> None:
    out, _ = tiny
    events, solution = pd.read_csv(out / "test_events.csv"), pd.read_csv(out / "solution.csv")
    assert list(events.columns) == ["soundscape", "label", "start_s", "end_s", "snr_db"]
    window = (events["start_s"] // 5).astype(int)
    assert (window == ((events["end_s"] - 1e-6) // 5).astype(int)).all()
    assert ((events["end_s"] - events["start_s"]).between(1.5, 4.0)).all() and events["snr_db"].between(0, 15).all()
    marked = {(e.soundscape + f"_{5 * (w + 1)}", e.label) for e, w in zip(events.itertuples(), window)}
    positives = solution.melt(id_vars="row_id", var_name="label").query("value == 1")
    assert set(zip(positives["row_id"], positives["label"])) == marked


def test_same_seed_gives_the_same_dataset_and_another_seed_does_not(tmp_path: Path,
                                                                    tiny: tuple[Path, SynthSummary]) -> None:
    out, _ = tiny
    again, other = tmp_path / "again", tmp_path / "other"
    synthesize_dataset(again, seed=0, **TINY)
    synthesize_dataset(other, seed=1, **TINY)
    for name in ("solution.csv", "train.csv", "taxonomy.csv", "test_events.csv"):
        assert (again / name).read_text() == (out / name).read_text(), name
    first_clip = pd.read_csv(out / "train.csv")["filename"].iloc[0]
    for rel in (f"train_audio/{first_clip}", "test_soundscapes/SYN_TEST_000.ogg"):
        np.testing.assert_array_equal(load_audio(again / rel), load_audio(out / rel))
    assert (other / "train.csv").read_text() != (out / "train.csv").read_text()
    a = load_audio(out / "test_soundscapes/SYN_TEST_000.ogg")
    b = load_audio(other / "test_soundscapes/SYN_TEST_000.ogg")
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-3)


def test_species_have_distinct_bands_and_neighbours_differ_in_kind() -> None:
    specs = design_species(8, seed=0)
    assert len({s.label for s in specs}) == 8 and {s.kind for s in specs} <= set(CALL_KINDS)
    by_band = sorted(specs, key=lambda s: s.freq_hz)
    assert all(b.freq_hz / a.freq_hz > 1.3 for a, b in zip(by_band, by_band[1:]))
    assert all(a.kind != b.kind for a, b in zip(by_band, by_band[1:]))
    assert design_species(8, seed=0) == specs and design_species(8, seed=1) != specs


def test_each_call_peaks_in_its_band_and_lowest_and_highest_species_do_not_overlap() -> None:
    rng, specs = np.random.default_rng(0), sorted(design_species(8, seed=0), key=lambda s: s.freq_hz)
    peaks = []
    for spec in specs:
        calls = [make_call(spec, SR, rng) for _ in range(6)]
        assert all(c.dtype == np.float32 and np.abs(c).max() == pytest.approx(1.0) for c in calls)
        spectrum = np.mean([np.abs(np.fft.rfft(c, n=SR)) ** 2 for c in calls], axis=0)  # 1 Hz bins
        peaks.append(int(spectrum.argmax()))
        assert 0.75 * spec.freq_hz < peaks[-1] < 1.3 * spec.freq_hz, spec
    assert peaks[-1] > 4 * peaks[0]


def test_bouts_of_each_species_are_recognised_by_a_nearest_centroid_rule() -> None:
    """A stand-in for 'learnable': band profiles of fresh bouts sit nearest their own species' mean."""
    specs, edges = design_species(8, seed=3), np.geomspace(300, 14_000, 41)
    rng = np.random.default_rng(1)
    profiles = {s.label: [_band_profile(make_bout(s, 2.0, SR, rng), edges) for _ in range(6)] for s in specs}
    centroids = {label: np.mean(p[:3], axis=0) for label, p in profiles.items()}
    for label, p in profiles.items():
        for profile in p[3:]:
            assert max(centroids, key=lambda c: float(profile @ centroids[c])) == label
    assert all(len(make_bout(s, 1.7, SR, rng)) == round(1.7 * SR) for s in specs)


def test_babble_is_low_pitched_and_syllabic() -> None:
    wave = make_babble(2.0, SR, np.random.default_rng(0))
    power = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / SR)
    assert power[freqs < 3_000].sum() > 0.99 * power.sum()
    envelope = np.abs(wave).reshape(-1, SR // 50).max(axis=1)  # 20 ms frames
    assert (envelope < 0.1).mean() > 0.2 and (envelope > 0.5).mean() > 0.2  # pauses between syllables


def test_csa_clip_opens_with_loud_low_frequency_speech(tiny: tuple[Path, SynthSummary]) -> None:
    out, _ = tiny
    train = pd.read_csv(out / "train.csv")
    wave = load_audio(out / "train_audio" / train.loc[train["collection"] == "CSA", "filename"].iloc[0])

    def low_band_power(part: np.ndarray) -> float:
        power, freqs = np.abs(np.fft.rfft(part)) ** 2, np.fft.rfftfreq(len(part), 1 / SR)
        return float(power[(freqs > 90) & (freqs < 420)].sum() / len(part))

    assert len(wave) >= 7 * SR
    assert low_band_power(wave[: 2 * SR]) > 4 * low_band_power(wave[2 * SR :])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"soundscape_s": 12.0}, "multiple of 5"), ({"n_species": 0}, ">= 1"), ({"sample_rate": 4_000}, "8000"),
     ({"n_train_soundscapes": -1}, "n_train_soundscapes and seed must be >= 0"), ({"seed": -3}, "got 1 and -3")],
)
def test_bad_arguments_are_refused(tmp_path: Path, kwargs: dict, message: str) -> None:
    from birdclef.errors import ConfigError

    with pytest.raises(ConfigError, match=message):  # a BirdclefError: the CLI prints one line
        synthesize_dataset(tmp_path / "x", **{**TINY, **kwargs})
    assert not (tmp_path / "x").exists()


def test_cli_bad_arguments_and_a_file_as_out_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from birdclef import cli

    assert cli.main(["synth", "--out", str(tmp_path / "x"), "--species", "0"]) == 2
    assert capsys.readouterr().err.strip() == ("birdclef synth: error: argument --species: must be a whole number "
                                               ">= 1, got '0' (see `birdclef synth --help`)")
    (tmp_path / "file").write_text("not a folder")
    assert cli.main(["synth", "--out", str(tmp_path / "file"), "--species", "2"]) == 2
    assert "file: is an existing file; give a folder" in capsys.readouterr().err
