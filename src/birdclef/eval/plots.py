"""Report figures: per-class AUC bars, training curves, and one soundscape's detections over time.

Every function draws on a bare :class:`matplotlib.figure.Figure` (Agg canvas; pyplot and its global
backend are never touched, so nothing needs a display and no figure outlives the call), writes a
PNG atomically and returns its path. Nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from birdclef.audio.segments import split_row_ids
from birdclef.features.filterbank import mel_frequencies, mel_spectrogram, power_to_db
from birdclef.utils.io import write_atomic

DPI = 110
"""Resolution of every PNG (dots per inch)."""
WINDOW_S = 5.0
"""Length of one prediction window (s): row_id `<stem>_<end_s>` covers [end_s - 5, end_s)."""
TRUTH_COLOR = "#ff2d2d"
"""Outline colour of a true-positive cell; visible on every colour of viridis."""
_MEL = {"n_fft": 1_024, "hop_length": 512, "n_mels": 128, "f_min": 50.0, "f_max": 14_000.0}
_KHZ_TICKS = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
_MAX_ANNOTATED_WINDOWS = 24
"""Heatmap cells get their probability written in them up to this many windows per file."""


def _save(fig: Figure, out: Path) -> Path:
    """Write `fig` as a PNG at `out` atomically (parent folders are created)."""
    out = Path(out)
    write_atomic(out, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    return out


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name}: missing column(s) {missing}; have {list(frame.columns)}")


def plot_class_auc(per_class: pd.DataFrame, out: Path) -> Path:
    """Horizontal bars of per-class ROC-AUC, worst class on top, with the macro mean as a line.

    Skipped classes (not scored) come last, greyed, with their reason written in the row.

    Args:
        per_class: the table of :func:`birdclef.eval.metrics.per_class_roc_auc`
            (columns class, auc, scored, reason).
        out: PNG path to write.

    Raises:
        ValueError: a column is missing or the table is empty.
    """
    _require(per_class, ("class", "auc", "scored", "reason"), "per_class")
    if per_class.empty:
        raise ValueError("per_class: no classes to plot")
    scored = per_class[per_class["scored"].astype(bool)].sort_values(["auc", "class"], kind="stable")
    skipped = per_class[~per_class["scored"].astype(bool)].sort_values("class", kind="stable")
    n_rows = len(scored) + len(skipped)
    fig = Figure(figsize=(8.0, max(2.6, 1.3 + 0.24 * n_rows)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(scored))
    colors = matplotlib.colormaps["RdYlGn"]((scored["auc"].to_numpy() - 0.5) * 2.0)
    ax.barh(y, scored["auc"], height=0.75, color=colors, edgecolor="0.3", linewidth=0.4)
    for row, auc in zip(y, scored["auc"]):
        ax.text(auc + 0.01, row, f"{auc:.3f}", va="center", fontsize=8, zorder=4,  # readable over the macro line
                bbox={"facecolor": "white", "edgecolor": "none", "alpha": 0.85, "pad": 0.6})
    for row, reason in zip(len(scored) + np.arange(len(skipped)), skipped["reason"]):
        ax.text(0.01, row, f"skipped: {reason}", va="center", fontsize=8, color="0.45", style="italic")
    _auc_axes(ax, scored, list(scored["class"]) + list(skipped["class"]), len(scored))
    return _save(fig, out)


def _auc_axes(ax: Axes, scored: pd.DataFrame, labels: list[str], n_scored: int) -> None:
    """Class labels (skipped ones grey), chance and macro lines, limits and title of the AUC chart."""
    ax.set_yticks(np.arange(len(labels)), labels, fontsize=8)
    for tick in ax.get_yticklabels()[n_scored:]:
        tick.set_color("0.55")
    ax.set_ylim(len(labels) - 0.5, -0.5)  # first row on top
    ax.set_xlim(0.0, 1.1)
    ax.set_xticks(np.linspace(0.0, 1.0, 11))
    ax.axvline(0.5, color="0.5", linestyle=":", linewidth=1, label="chance (0.5)")
    title = "Per-class ROC-AUC"
    if n_scored:
        macro = float(scored["auc"].mean())
        ax.axvline(macro, color="black", linestyle="--", linewidth=1.2, label=f"macro mean {macro:.4f}")
        title += f": macro {macro:.4f} over {n_scored} class(es)"
    if len(labels) > n_scored:
        title += f", {len(labels) - n_scored} skipped"
    ax.set_title(title, loc="left", fontsize=10)
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=2, frameon=False, fontsize=8,
              borderaxespad=1.6)
    ax.set_xlabel("ROC-AUC (one class vs rest)")
    ax.grid(axis="x", color="0.9")
    ax.set_axisbelow(True)


def plot_training_curves(metrics: pd.DataFrame, out: Path) -> Path:
    """Per fold: train/val loss (left panel) and val AUC with its best epoch starred (right panel).

    Colour is the fold; in the loss panel solid is train and dashed is validation. NaN values
    (e.g. a fold whose validation had no scoreable class) leave gaps.

    Args:
        metrics: a run's metrics.csv (columns epoch and any of train_loss, val_loss, val_auc;
            fold optional, one fold assumed without it).
        out: PNG path to write.

    Raises:
        ValueError: no epoch column, none of the curve columns, or no rows.
    """
    _require(metrics, ("epoch",), "metrics")
    curves = [c for c in ("train_loss", "val_loss", "val_auc") if c in metrics.columns]
    if not curves or metrics.empty:
        raise ValueError(f"metrics: need rows and one of train_loss, val_loss, val_auc; have {list(metrics.columns)}")
    frame = metrics if "fold" in metrics.columns else metrics.assign(fold=0)
    fig = Figure(figsize=(12.0, 4.2), layout="constrained")
    loss_ax, auc_ax = fig.subplots(1, 2)
    palette = matplotlib.colormaps["tab10"]
    handles = []
    for i, (fold, rows) in enumerate(frame.groupby("fold", sort=True)):
        rows, color = rows.sort_values("epoch"), palette(i % 10)
        _plot_fold(loss_ax, auc_ax, rows, color)
        handles.append(Line2D([], [], color=color, marker="o", markersize=4, label=f"fold {fold}"))
    handles += [Line2D([], [], color="0.3", label="train loss"),
                Line2D([], [], color="0.3", linestyle="--", label="val loss"),
                Line2D([], [], color="0.3", marker="*", linestyle="", markersize=10, label="best val AUC")]
    _curve_axes(loss_ax, "loss", "Loss", has_data=bool({"train_loss", "val_loss"} & set(curves)))
    has_auc = "val_auc" in frame.columns and bool(frame["val_auc"].notna().any())
    _curve_axes(auc_ax, "val ROC-AUC", "Validation macro ROC-AUC", has_data=has_auc)
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    return _save(fig, out)


def _plot_fold(loss_ax: Axes, auc_ax: Axes, rows: pd.DataFrame, color: tuple) -> None:
    """One fold's lines in both panels; a star on its best val AUC."""
    if "train_loss" in rows:
        loss_ax.plot(rows["epoch"], rows["train_loss"], color=color, marker="o", markersize=3)
    if "val_loss" in rows:
        loss_ax.plot(rows["epoch"], rows["val_loss"], color=color, marker="o", markersize=3, linestyle="--")
    if "val_auc" in rows and rows["val_auc"].notna().any():
        auc_ax.plot(rows["epoch"], rows["val_auc"], color=color, marker="o", markersize=3)
        best = rows.loc[rows["val_auc"].idxmax()]
        auc_ax.plot(best["epoch"], best["val_auc"], color=color, marker="*", markersize=12, markeredgecolor="black")


def _curve_axes(ax: Axes, ylabel: str, title: str, has_data: bool) -> None:
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(color="0.9")
    if not has_data:
        ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", va="center", color="0.5")


def plot_detections(
    wave: np.ndarray,
    sample_rate: int,
    probs: pd.DataFrame,
    out: Path,
    top_k: int = 5,
    truth: pd.DataFrame | None = None,
    title: str = "",
) -> Path:
    """One soundscape: its mel spectrogram over a heatmap of class probabilities per 5 s window.

    The top panel is the log-mel spectrogram (dB) of the whole file against time in seconds; the
    bottom panel shares that time axis, one column per window ([end_s - 5, end_s) from the row_id),
    one row per class: the `top_k` classes by their max probability in the file, best on top. When
    `truth` is given, classes labelled in the file but outside the top_k are added (so misses show)
    and every labelled cell gets a red outline. Windows absent from `probs` are left blank.

    Args:
        wave: (samples,) waveform of the soundscape.
        sample_rate: its rate in Hz.
        probs: the file's rows: row_id plus one probability column per class.
        out: PNG path to write.
        top_k: how many classes to show (at least 1).
        truth: optional 0/1 labels of the same layout, matched to `probs` by row_id.
        title: figure title (e.g. the soundscape stem).

    Raises:
        ValueError: empty wave or probs, no row_id or class columns, malformed or duplicate
            row ids, end seconds that are not multiples of 5, or top_k < 1.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if wave.size == 0 or probs.empty or top_k < 1:
        raise ValueError(f"need a non-empty wave and probs and top_k >= 1 (got {wave.size} samples, "
                         f"{len(probs)} rows, top_k={top_k})")
    _require(probs, ("row_id",), "probs")
    columns = _window_columns(split_row_ids(probs["row_id"])[1])
    classes = _shown_classes(probs, top_k, truth)
    n_windows = max(int(columns.max()) + 1, int(np.ceil(wave.size / sample_rate / WINDOW_S - 1e-3)))
    cells = np.full((len(classes), n_windows), np.nan)
    cells[:, columns] = probs[classes].to_numpy(dtype=np.float64).T  # (classes, windows)
    fig = Figure(figsize=(float(np.clip(2.5 + 0.95 * n_windows, 10.0, 40.0)), 5.0 + 0.36 * len(classes)),
                 layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.0, 0.015), height_ratios=(3.2, 0.6 + 0.36 * len(classes)))
    spec_ax = fig.add_subplot(grid[0, 0])
    heat_ax = fig.add_subplot(grid[1, 0], sharex=spec_ax)
    _draw_spectrogram(spec_ax, fig.add_subplot(grid[0, 1]), wave, sample_rate)
    _draw_heatmap(heat_ax, fig.add_subplot(grid[1, 1]), cells, classes)
    if truth is not None:
        _draw_truth(heat_ax, _truth_cells(truth, probs, classes, columns, n_windows))
    for edge in np.arange(1, n_windows) * WINDOW_S:  # window boundaries, to read columns against the sound
        spec_ax.axvline(edge, color="white", linewidth=0.6, alpha=0.35)
    spec_ax.set_xlim(0.0, n_windows * WINDOW_S)
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, out)


def _window_columns(ends: np.ndarray) -> np.ndarray:
    """Column of each row: window k covers [5k, 5k + 5) s and has end second 5(k + 1)."""
    columns = np.rint(ends / WINDOW_S).astype(int) - 1
    off_grid = np.abs((columns + 1) * WINDOW_S - ends) > 1e-6
    if off_grid.any() or (columns < 0).any():
        bad = ends[off_grid | (columns < 0)][:5].tolist()
        raise ValueError(f"row_id end seconds must be positive multiples of {WINDOW_S:g}, got {bad}")
    if len(np.unique(columns)) != len(columns):
        raise ValueError("probs: duplicated windows (the same end second twice)")
    return columns


def _shown_classes(probs: pd.DataFrame, top_k: int, truth: pd.DataFrame | None) -> list[str]:
    """The top_k classes by max probability, plus any class labelled in `truth`; best first."""
    peak = probs.drop(columns="row_id").astype(np.float64).max(axis=0)
    if peak.empty:
        raise ValueError("probs: no class columns besides row_id")
    chosen = set(peak.sort_values(ascending=False, kind="stable").index[:top_k])
    if truth is not None:
        labelled = truth.reindex(columns=peak.index).fillna(0).astype(np.float64).max(axis=0)  # drops e.g. Usage
        chosen |= set(labelled[labelled > 0].index)
    return [c for c in peak.sort_values(ascending=False, kind="stable").index if c in chosen]


def _draw_spectrogram(ax: Axes, cax: Axes, wave: np.ndarray, sample_rate: int) -> None:
    """Log-mel image with frames centred on their times (centred STFT) and a kHz frequency axis."""
    params = dict(_MEL, f_max=min(_MEL["f_max"], sample_rate / 2))
    db = power_to_db(mel_spectrogram(wave, sample_rate, **params))  # (n_mels, frames)
    frame_s = params["hop_length"] / sample_rate
    extent = (-0.5 * frame_s, (db.shape[1] - 0.5) * frame_s, 0.0, float(db.shape[0]))
    image = ax.imshow(db, origin="lower", aspect="auto", extent=extent, cmap="magma", interpolation="antialiased")
    centres = mel_frequencies(params["n_mels"] + 2, params["f_min"], params["f_max"], htk=True)[1:-1]
    ticks = [k for k in _KHZ_TICKS if centres[0] <= k * 1_000 <= centres[-1]]
    rows = [np.interp(k * 1_000, centres, np.arange(len(centres))) + 0.5 for k in ticks]  # row k spans [k, k + 1)
    ax.set_yticks(rows, [f"{k:g}" for k in ticks])
    ax.set_ylabel("frequency (kHz, mel scale)")
    ax.tick_params(labelbottom=False)
    fig_colorbar = ax.figure.colorbar(image, cax=cax)
    fig_colorbar.set_label("dB")


def _draw_heatmap(ax: Axes, cax: Axes, cells: np.ndarray, classes: list[str]) -> None:
    """Classes x windows probability cells on the time axis, class names on y, values written in."""
    n_classes, n_windows = cells.shape
    low, high = min(0.0, np.nanmin(cells)), max(1.0, np.nanmax(cells))
    mesh = ax.pcolormesh(np.arange(n_windows + 1) * WINDOW_S, np.arange(n_classes + 1), np.ma.masked_invalid(cells),
                         cmap="viridis", vmin=low, vmax=high, edgecolors="0.15", linewidth=0.3)
    ax.set_yticks(np.arange(n_classes) + 0.5, classes, fontsize=9)
    ax.set_ylim(n_classes, 0)  # best class on top
    ax.set_xlabel("time (s)")
    ax.set_xticks(np.arange(n_windows + 1) * WINDOW_S if n_windows <= 36 else ax.get_xticks())
    ax.figure.colorbar(mesh, cax=cax).set_label("probability")
    if n_windows <= _MAX_ANNOTATED_WINDOWS:
        for (row, col), value in np.ndenumerate(cells):
            if np.isfinite(value):
                shade = "black" if (value - low) / (high - low) > 0.6 else "white"
                ax.text((col + 0.5) * WINDOW_S, row + 0.5, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color=shade)


def _truth_cells(truth: pd.DataFrame, probs: pd.DataFrame, classes: list[str], columns: np.ndarray,
                 n_windows: int) -> np.ndarray:
    """(classes, windows) bool: labelled cells, matched to `probs` by row_id (missing rows: unlabelled)."""
    labels = truth.set_index(truth["row_id"].astype(str)).reindex(probs["row_id"].astype(str))
    values = labels.reindex(columns=classes).fillna(0).to_numpy(dtype=np.float64) > 0  # (rows, classes)
    cells = np.zeros((len(classes), n_windows), dtype=bool)
    cells[:, columns] = values.T
    return cells


def _draw_truth(ax: Axes, cells: np.ndarray) -> None:
    """Red outline on each labelled cell, and a legend entry when there is any."""
    for row, col in zip(*np.nonzero(cells)):
        ax.add_patch(Rectangle((col * WINDOW_S + 0.15, row + 0.06), WINDOW_S - 0.3, 0.88, fill=False,
                               edgecolor=TRUTH_COLOR, linewidth=2.0))
    if cells.any():
        handle = Rectangle((0, 0), 1, 1, fill=False, edgecolor=TRUTH_COLOR, linewidth=2.0, label="true label")
        ax.legend(handles=[handle], loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8,
                  borderaxespad=0.2)


def plot_window_weights(wave: np.ndarray, sample_rate: int, windows: pd.DataFrame, out: Path, title: str = "") -> Path:
    """One recording's mel spectrogram over the weight a MIL pooling gave each of its windows.

    The top panel is the log-mel spectrogram (dB) against time in seconds, the chosen window shaded; the
    bottom panel draws each window as a bar over its span at the height of its weight (windows may overlap),
    the chosen one in red.

    Args:
        wave: (samples,) waveform of the recording (from its start).
        sample_rate: its rate in Hz.
        windows: one row per window: ``start_s``, ``end_s``, ``weight`` and ``chosen`` (bool), as in a MIL
            run's ``mil_windows.csv`` (:mod:`birdclef.train.mil_windows`).
        out: PNG path to write.
        title: figure title (e.g. the file name and label).

    Raises:
        ValueError: an empty wave or table, or a missing column.
    """
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    _require(windows, ("start_s", "end_s", "weight", "chosen"), "windows")
    if wave.size == 0 or windows.empty:
        raise ValueError(f"need a non-empty wave and windows table (got {wave.size} samples, {len(windows)} rows)")
    end = max(float(windows["end_s"].max()), wave.size / sample_rate)
    fig = Figure(figsize=(float(np.clip(2.0 + 0.8 * end, 8.0, 30.0)), 5.5), layout="constrained")
    grid = fig.add_gridspec(2, 2, width_ratios=(1.0, 0.015), height_ratios=(3.0, 1.6))
    spec_ax = fig.add_subplot(grid[0, 0])
    weight_ax = fig.add_subplot(grid[1, 0], sharex=spec_ax)
    _draw_spectrogram(spec_ax, fig.add_subplot(grid[0, 1]), wave, sample_rate)
    for row in windows.itertuples(index=False):
        chosen = bool(row.chosen)
        weight_ax.bar(row.start_s, row.weight, width=row.end_s - row.start_s, align="edge",
                      alpha=0.75 if chosen else 0.35, color=TRUTH_COLOR if chosen else "#3b6ea8", edgecolor="0.2",
                      linewidth=0.5)
        if chosen:
            spec_ax.axvspan(row.start_s, row.end_s, facecolor="white", alpha=0.18, edgecolor=TRUTH_COLOR, linewidth=2.0)
    weight_ax.set_ylim(0.0, min(1.0, float(windows["weight"].max()) * 1.15) or 1.0)
    weight_ax.set_ylabel("window weight")
    weight_ax.set_xlabel("time (s)")
    spec_ax.set_xlim(0.0, end)
    fig.add_subplot(grid[1, 1]).axis("off")
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, out)
