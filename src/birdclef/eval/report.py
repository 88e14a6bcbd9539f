"""A self-contained HTML report of a submission: score, per-class AUC, training curves, detections.

:func:`write_report` writes ``out_dir/index.html`` plus the PNGs it shows, side by side, so the
folder can be zipped or opened from disk (every ``img`` is a relative link). Inputs other than
the submission are optional; each adds its sections. A soundscape whose audio is missing or
broken is noted in the page and skipped. Nothing here needs torch.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd

from birdclef.audio.io import SAMPLE_RATE, load_audio
from birdclef.errors import AudioError, DatasetError, SubmissionError
from birdclef.eval.mil_report import mil_section
from birdclef.eval.metrics import (IGNORED_SOLUTION_COLUMNS, EvalReport, check_row_ids, evaluate_submission,
                                   numeric_values)
from birdclef.eval.plots import plot_class_auc, plot_detections, plot_training_curves, split_row_ids
from birdclef.utils.io import read_csv_checked, write_text_atomic

from birdclef.audio.discover import AUDIO_SUFFIXES
"""Looked for in this order as `<soundscapes>/<stem><suffix>`."""

_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1.5em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.1em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 2em; }
.meta { color: #666; font-size: 0.9em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.7em; text-align: left; }
th { background: #f4f4f4; } table.kv td:first-child { font-weight: 600; background: #fafafa; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.skipped td { color: #999; font-style: italic; }
.score { font-size: 2em; font-weight: 600; } .note { background: #fff4e5; border-left: 4px solid #f0a030;
       padding: 0.4em 0.8em; margin: 0.6em 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
details summary { cursor: pointer; color: #246; margin: 0.5em 0; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _img(name: str, alt: str) -> str:
    return f'<img src="{_esc(quote(name))}" alt="{_esc(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _table(header: Sequence[str] | None, rows: Sequence[Sequence[object]], numeric: Sequence[int] = (),
           row_classes: Sequence[str] | None = None) -> str:
    """An escaped HTML table; columns in `numeric` are right-aligned; header None: a key/value table."""
    head = "" if header is None else "<thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in header) + "</tr></thead>"
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="num">{_esc(v)}</td>' if j in numeric else f"<td>{_esc(v)}</td>"
                        for j, v in enumerate(row))
        css = f' class="{_esc(row_classes[i])}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{css}>{cells}</tr>")
    kind = ' class="kv"' if header is None else ""
    return f"<table{kind}>{head}<tbody>{''.join(body)}</tbody></table>"


def _read_predictions(path: Path, role: str) -> tuple[pd.DataFrame, list[str]]:
    """A submission/solution CSV with row_id as text, and the stem of each row.

    Raises:
        SubmissionError: the file is missing or unreadable, has no row_id or class column, a
            row_id is not `<stem>_<end_second>` or is repeated, or a class cell is not a finite number.
    """
    frame = read_csv_checked(path, f"{role} file", SubmissionError, f"cannot read {role} CSV", dtype={"row_id": str})
    if "row_id" not in frame.columns or len(frame.columns) < 2 or frame.empty:
        raise SubmissionError(f"{path}: {role} needs rows, a 'row_id' column and class columns "
                              f"(columns: {list(frame.columns)[:6]})")
    try:
        stems, _ = split_row_ids(frame["row_id"])
    except ValueError as exc:
        raise SubmissionError(f"{path}: {exc}") from None
    ids = check_row_ids(frame, str(path))  # duplicated rows would draw one window twice
    classes = [c for c in frame.columns if c != "row_id" and c not in IGNORED_SOLUTION_COLUMNS]
    numeric_values(frame.set_axis(ids)[classes], str(path), "probabilities" if role == "submission" else "labels")
    return frame, stems


def _check_folders(run: Path | None, soundscapes: Path | None) -> None:
    """Fail before anything is written when an optional input folder is given but unusable."""
    if soundscapes is not None and not soundscapes.is_dir():
        raise DatasetError(f"{soundscapes}: soundscape folder not found")
    if run is None:
        return
    if not run.is_dir():
        raise DatasetError(f"{run}: training run folder not found")
    if not (run / "metrics.csv").is_file() and not (run / "summary.json").is_file() and not _fold_metrics(run):
        raise DatasetError(f"{run}: not a training run folder (no metrics.csv, fold*/metrics.csv or summary.json)")


def _choose_files(frame: pd.DataFrame, stems: list[str], solution: pd.DataFrame | None,
                  files: Sequence[str] | None, max_files: int, source: Path) -> list[str]:
    """The stems to draw: `files` as given, else those with most labelled cells, else the first ones."""
    order = list(dict.fromkeys(stems))
    if files is not None:
        unknown = [f for f in files if f not in set(order)]
        if unknown:
            raise SubmissionError(f"{source}: no rows for soundscape(s) {unknown[:5]}; it has e.g. {order[:3]}")
        return list(files)
    if solution is None:
        return order[:max_files]
    sol_stems, _ = split_row_ids(solution["row_id"])
    labels = solution.drop(columns=[c for c in ("row_id", "usage", "Usage") if c in solution.columns])
    positives = labels.apply(pd.to_numeric, errors="coerce").fillna(0).sum(axis=1).groupby(sol_stems).sum()
    ranked = sorted(order, key=lambda stem: -positives.get(stem, 0))  # stable: ties keep submission order
    return ranked[:max_files]


def _summary_section(submission: Path, frame: pd.DataFrame, stems: list[str], solution: Path | None,
                     evaluation: EvalReport | None) -> str:
    rows = [("submission", submission), ("rows (5 s windows)", len(frame)),
            ("soundscapes", len(set(stems))), ("classes", len(frame.columns) - 1)]
    if solution is not None:
        rows.append(("solution", solution))
    parts = ["<h2>Summary</h2>", _table(None, rows)]
    if evaluation is not None:
        skipped = evaluation.per_class.loc[~evaluation.per_class["scored"], "reason"].value_counts()
        why = ", ".join(f"{n} {reason}" for reason, n in skipped.items())
        parts.append(f'<p>Macro ROC-AUC <span class="score">{evaluation.score:.4f}</span> over '
                     f"{evaluation.n_scored} scored class(es)"
                     + (_esc(f"; {evaluation.n_skipped} skipped ({why})") if evaluation.n_skipped else "") + "</p>")
    return "\n".join(parts)


def _class_section(evaluation: EvalReport, out_dir: Path) -> str:
    """AUC bar chart and the per-class table (worst scored class first, skipped ones last)."""
    plot_class_auc(evaluation.per_class, out_dir / "class_auc.png")
    table = evaluation.per_class
    ordered = pd.concat([table[table["scored"]].sort_values(["auc", "class"], kind="stable"),
                         table[~table["scored"]].sort_values("class", kind="stable")])
    rows = [(r["class"], f"{r['auc']:.4f}" if r["scored"] else "-", r["positives"], r["negatives"],
             "" if r["scored"] else f"skipped: {r['reason']}") for _, r in ordered.iterrows()]
    css = ["" if scored else "skipped" for scored in ordered["scored"]]
    return "\n".join([
        "<h2>Per-class ROC-AUC</h2>", _img("class_auc.png", "per-class ROC-AUC bar chart"),
        f"<details open><summary>Per-class table ({len(rows)} classes)</summary>",
        _table(("class", "ROC-AUC", "positives", "negatives", "note"), rows, numeric=(1, 2, 3), row_classes=css),
        "</details>",
    ])


def _fold_metrics(run: Path) -> list[Path]:
    return sorted(run.glob("fold*/metrics.csv"))


def _read_metrics(run: Path) -> pd.DataFrame:
    """run/metrics.csv, else the fold folders' metrics.csv joined (a run interrupted before its summary)."""
    paths = [run / "metrics.csv"] if (run / "metrics.csv").is_file() else _fold_metrics(run)
    if not paths:
        raise FileNotFoundError(f"{run / 'metrics.csv'}: not found")
    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def _training_section(run: Path, out_dir: Path) -> str:
    """Training curves from metrics.csv and fold/OOF scores from summary.json; problems become notes."""
    parts = ["<h2>Training</h2>", f'<p class="meta">run: {_esc(run)}</p>']
    try:
        plot_training_curves(_read_metrics(run), out_dir / "training_curves.png")
        parts.append(_img("training_curves.png", "training curves: loss and validation AUC per fold"))
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        parts.append(_note(f"training curves not drawn: {exc}"))
    summary_path = run / "summary.json"
    if not summary_path.is_file():
        return "\n".join([*parts, _note(f"{summary_path}: not found; no fold scores")])
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        return "\n".join([*parts, _note(f"{summary_path}: cannot read ({exc})")])
    return "\n".join([*parts, _scores_table(summary)])


def _fmt_score(value: object) -> str:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if not np.isfinite(number) else f"{number:.4f}"


def _scores_table(summary: dict) -> str:
    """Best validation score per fold, their mean, and the out-of-fold AUC."""
    fold_scores = summary.get("fold_scores") or {}
    ordered = sorted(fold_scores.items(), key=lambda kv: (len(str(kv[0])), str(kv[0])))  # "2" before "10"
    rows = [(f"fold {fold} (best epoch)", _fmt_score(score)) for fold, score in ordered]
    finite = [float(s) for s in fold_scores.values() if _fmt_score(s) != "n/a"]
    if finite:
        rows.append(("mean of folds", f"{np.mean(finite):.4f}"))
    rows.append(("out-of-fold ROC-AUC", _fmt_score(summary.get("oof_auc"))))
    extra = [(key, value) for key, value in summary.items() if key not in ("fold_scores", "oof_auc")]
    return _table(("", "ROC-AUC"), rows, numeric=(1,)) + (_table(None, extra) if extra else "")


def _find_audio(soundscapes: Path, stem: str) -> Path:
    for suffix in AUDIO_SUFFIXES:
        if (soundscapes / f"{stem}{suffix}").is_file():
            return soundscapes / f"{stem}{suffix}"
    return soundscapes / f"{stem}{AUDIO_SUFFIXES[0]}"  # load_audio reports it as not found


def _file_rows(frame: pd.DataFrame, stems: list[str], stem: str) -> pd.DataFrame:
    """One soundscape's rows in time order."""
    rows = frame[np.asarray(stems) == stem]
    return rows.iloc[np.argsort(split_row_ids(rows["row_id"])[1], kind="stable")]


def _detections_section(chosen: list[str], frame: pd.DataFrame, stems: list[str], solution: pd.DataFrame | None,
                        soundscapes: Path | None, out_dir: Path, top_k: int) -> str:
    """One detection figure per chosen soundscape; a missing or broken audio file is a note."""
    parts = ["<h2>Detections over time</h2>"]
    if soundscapes is None:
        return "\n".join([*parts, _note("no soundscape folder given: detection figures skipped")])
    truth_stems = split_row_ids(solution["row_id"])[0] if solution is not None else []
    legend = f"Top {top_k} classes by max probability in the file"
    parts.append(f"<p>{_esc(legend)}" + ("; classes labelled in the solution are added, and labelled windows "
                                          "have a red outline." if solution is not None else ".") + "</p>")
    for i, stem in enumerate(chosen):
        parts.append(f"<h3>{_esc(stem)}</h3>")
        try:
            wave = load_audio(_find_audio(soundscapes, stem), SAMPLE_RATE)
        except AudioError as exc:
            parts.append(_note(f"skipped: {exc}"))
            continue
        truth = _file_rows(solution, truth_stems, stem) if solution is not None else None
        name = f"detections_{i:02d}_{re.sub(r'[^A-Za-z0-9_.-]', '_', stem)}.png"
        plot_detections(wave, SAMPLE_RATE, _file_rows(frame, stems, stem), out_dir / name, top_k, truth, stem)
        parts.append(_img(name, f"mel spectrogram and class probabilities of {stem}"))
    return "\n".join(parts)


def write_report(
    out_dir: Path,
    submission: Path,
    solution: Path | None = None,
    run: Path | None = None,
    soundscapes: Path | None = None,
    files: Sequence[str] | None = None,
    max_files: int = 3,
    top_k: int = 5,
) -> Path:
    """Write `out_dir/index.html` and its PNGs: summary, score, per-class AUC, training, detections.

    Example:
        >>> write_report(Path("report"), Path("submission.csv"), solution=Path("solution.csv"),
        ...              run=Path("runs/exp"), soundscapes=Path("data/test_soundscapes"))  # doctest: +SKIP

    Args:
        out_dir: folder to write into (created; files of the same names are replaced).
        submission: prediction CSV, row_id `<stem>_<end_s>` plus one probability column per class.
        solution: optional 0/1 labels of the same layout; adds the score and per-class AUC.
        run: optional training run folder (metrics.csv, summary.json); adds curves and fold scores, and for
            a MIL run (mil_windows.csv) spectrograms of training clips with their window weights.
        soundscapes: optional folder of `<stem>.ogg`; adds one detection figure per chosen file.
        files: stems to draw; default the `max_files` with most labelled windows in the solution,
            or without a solution the first `max_files` stems of the submission.
        max_files: how many soundscapes to pick when `files` is None.
        top_k: classes per detection figure.

    Returns:
        The path of index.html.

    Raises:
        SubmissionError: the submission or solution is missing, unreadable or does not line up,
            or `files` names a stem without rows.
        DatasetError: `run` or `soundscapes` is given but is not a usable folder.
        ValueError: max_files < 0 or top_k < 1.
    """
    if max_files < 0 or top_k < 1:
        raise ValueError(f"need max_files >= 0 and top_k >= 1, got max_files={max_files}, top_k={top_k}")
    submission, out_dir = Path(submission), Path(out_dir)
    solution, run = (None if p is None else Path(p) for p in (solution, run))
    soundscapes = None if soundscapes is None else Path(soundscapes)
    frame, stems = _read_predictions(submission, "submission")
    evaluation = evaluate_submission(submission, solution) if solution is not None else None
    truth = _read_predictions(solution, "solution")[0] if solution is not None else None
    _check_folders(run, soundscapes)
    chosen = _choose_files(frame, stems, truth, files, max_files, submission)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = [_summary_section(submission, frame, stems, solution, evaluation)]
    if evaluation is not None:
        sections.append(_class_section(evaluation, out_dir))
    if run is not None:
        sections.append(_training_section(run, out_dir))
        sections.append(mil_section(run, out_dir, _esc, _img, _note))  # '' unless a MIL run
    sections.append(_detections_section(chosen, frame, stems, truth, soundscapes, out_dir, top_k))
    return write_text_atomic(_page(f"BirdCLEF report: {submission.name}", sections), out_dir / "index.html")


def _page(title: str, sections: list[str]) -> str:
    generated = datetime.now().strftime("%Y-%m-%d %H:%M")
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_esc(title)}</h1>", f'<p class="meta">generated {_esc(generated)} by birdclef</p>',
        *sections, "</body></html>", "",
    ])
