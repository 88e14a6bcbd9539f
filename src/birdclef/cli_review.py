"""The review verbs of ``birdclef``: ``review`` (the local web app) and ``precision`` (precision, thresholds and
Raven tables from the answers). :mod:`birdclef.cli` adds their parsers and :data:`VERBS` to its own; library
imports happen inside each verb.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birdclef.cli_common import add_geo_flags, verb

OUT_KINDS = {"precision": "folder"}


def _results_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", type=Path, help="an `analyze` results folder, or a `predict` submission CSV")
    p.add_argument("--audio", "--soundscapes", dest="audio", type=Path, default=None,
                   help="the archive (analyze) or soundscape folder (submission) the results' paths are relative "
                        "to (default for analyze: the archive it recorded)")
    p.add_argument("--bins", type=int, default=None, help="score bins of the stratified queue (default 10)")
    p.add_argument("--min-score", type=float, default=None,
                   help="lowest score the stratified queue draws (default 0.1)")
    p.add_argument("--queue-size", type=int, default=None, help="items per queue and class (default 100)")
    p.add_argument("--seed", type=int, default=None, help="seed of the stratified draws (default 0)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Add the ``review`` and ``precision`` sub-commands to `sub`."""
    p = sub.add_parser("review", help="a local web app to verify detections (queues per class, spectrogram, audio, "
                       "keyboard answers saved to RESULTS/reviews.parquet)")
    _results_flags(p)
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--reviewer", default="", help="your name, saved with every answer")
    p.add_argument("--thresholds", type=Path, default=None,
                   help="per-class thresholds CSV: the margin queue's centre (default 0.5)")
    add_geo_flags(p)

    p = sub.add_parser("precision", help="precision per class and score bin with 95%% intervals from the stratified "
                       "reviews; thresholds.csv for a target precision; Raven tables of confirmed detections")
    _results_flags(p)
    p.add_argument("--target", type=float, default=0.9, help="precision the thresholds must reach (default 0.9)")
    p.add_argument("--conservative", action="store_true",
                   help="a threshold's whole 95%% interval must reach --target, not only its estimate")
    p.add_argument("--out", type=Path, default=None, help="output folder (default RESULTS/precision)")


def _session(args: argparse.Namespace, **extra):
    from birdclef.review.session import Session

    settings = {"bins": args.bins, "min_score": args.min_score, "size": args.queue_size, "seed": args.seed}
    return Session(args.results, args.audio, settings, **extra)


def _geo(args: argparse.Namespace):
    """(settings, taxonomy.csv) of the location filter's flags, or None without --lat/--lon."""
    from birdclef.birdnet.geo import settings_from_flags
    from birdclef.errors import BirdclefError

    settings = settings_from_flags(args.lat, args.lon, args.date, args.week, args.geo_threshold, args.geo_mode)
    if settings is None:
        return None
    if args.geo_taxonomy is None:
        raise BirdclefError("--lat/--lon: the location filter matches the results' classes by scientific name; give "
                            "--geo-taxonomy FILE (the dataset's taxonomy.csv)")
    if not args.geo_taxonomy.is_file():
        raise BirdclefError(f"{args.geo_taxonomy}: taxonomy file not found")
    return settings, args.geo_taxonomy


@verb("review")
def _review(args: argparse.Namespace) -> int:
    from birdclef.review.reviews import compact
    from birdclef.review.server import serve

    session = _session(args, reviewer=args.reviewer, thresholds=args.thresholds, geo=_geo(args))
    if session.geo_summary:
        print(session.geo_summary)
    done = len(compact(session.folder))  # fold in answers a killed server logged but did not compact
    print(f"{len(session.results.table)} windows of {len(session.results.classes)} classes; {done} answers so far "
          f"in {session.folder / 'reviews.parquet'}", flush=True)
    serve(session, args.host, args.port, announce=lambda line: print(line, flush=True))
    return 0


@verb("precision")
def _precision(args: argparse.Namespace) -> int:
    import pandas as pd

    from birdclef.review.precision import write_confirmed_raven
    from birdclef.review.reviews import read_reviews
    from birdclef.utils.io import write_csv_atomic

    session = _session(args)
    out = args.out if args.out is not None else session.folder / "precision"
    curves = session.curves()
    reviews = read_reviews(session.folder)
    if reviews.empty:
        print(f"no answers yet in {session.folder / 'reviews.parquet'}: review with `birdclef review {args.results}`")
        return 1
    table = pd.concat(curves.values(), ignore_index=True) if curves else pd.DataFrame()
    write_csv_atomic(table, out / "precision.csv")
    thresholds = session.thresholds_for(args.target, args.conservative)
    write_csv_atomic(thresholds, out / "thresholds.csv")
    tables = write_confirmed_raven(reviews, out, session.high_hz())
    for row in thresholds.itertuples(index=False):
        value = "none" if pd.isna(row.threshold) else f"{row.threshold:.3f}"
        print(f"  {row[0]:24} threshold {value:>6}  {row.note}")
    if not curves:
        print("no stratified answers yet: precision needs the stratified queue (review it in the app)")
    print(f"precision: {out / 'precision.csv'}; thresholds: {out / 'thresholds.csv'} (analyze --thresholds reads it); "
          f"{len(tables)} Raven tables of confirmed detections in {out / 'raven'}")
    return 0
