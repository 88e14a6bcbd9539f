"""The location filter's flags (``--lat --lon --date/--week --geo-threshold --geo-mode --geo-taxonomy``), shared by
``predict``, ``analyze`` (and any verb that scores with a predictor): :func:`add_geo_flags` adds them to a parser,
:func:`apply_geo_flags` wraps the verb's predictor and writes the per-class report. The filter itself is
:mod:`birdclef.birdnet.geo`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor

GEO_FLAGS = ("lat", "lon", "date", "week", "geo_threshold", "geo_mode", "geo_taxonomy")


def add_geo_flags(p: argparse.ArgumentParser) -> None:
    """Add the location-and-season filter's flags to a verb's parser (all default to None: no filter)."""
    g = p.add_argument_group("location and season filter (BirdNET's geographic model, CC BY-NC-SA 4.0)")
    g.add_argument("--lat", type=float, default=None, help="latitude of the recordings, degrees in [-90, 90]")
    g.add_argument("--lon", type=float, default=None, help="longitude, degrees in [-180, 180]")
    g.add_argument("--date", default=None, metavar="YYYY-MM-DD", help="recording date (gives BirdNET's week)")
    g.add_argument("--week", type=int, default=None,
                   help="BirdNET week 1..48 (4 per month), or -1 for year-round (the default without --date)")
    g.add_argument("--geo-threshold", type=float, default=None,
                   help="occurrence score below which a class is filtered (default 0.03, BirdNET-Analyzer's)")
    g.add_argument("--geo-mode", choices=["remove", "downweight"], default=None,
                   help="remove: filtered classes score 0; downweight: scores times occurrence / threshold "
                        "(default remove)")
    g.add_argument("--geo-taxonomy", type=Path, default=None,
                   help="taxonomy.csv matching classes by scientific_name (default: --taxonomy, DATA/taxonomy.csv, "
                        "or the first run's dataset)")


def geo_taxonomy(args: argparse.Namespace) -> Path:
    """The taxonomy.csv the filter matches classes with; see ``--geo-taxonomy``'s help.

    Raises:
        BirdclefError: none can be found, or the named file is missing.
    """
    from birdclef.birdnet.build import run_taxonomy

    found = getattr(args, "geo_taxonomy", None) or getattr(args, "taxonomy", None)
    if found is None and getattr(args, "data", None) is not None:
        found = Path(args.data) / "taxonomy.csv"
    if found is None and getattr(args, "runs", None):
        found = run_taxonomy(args.runs[0])
    if found is None:
        raise BirdclefError("--lat/--lon: the location filter matches classes by scientific name; give "
                            "--geo-taxonomy FILE (a taxonomy.csv)")
    if not Path(found).is_file():
        raise BirdclefError(f"{found}: taxonomy file not found (the location filter needs its scientific_name column)")
    return Path(found)


def apply_geo_flags(args: argparse.Namespace, predictor: Predictor, report: Path | None,
                    announce: bool = True) -> Predictor:
    """`predictor` filtered as the flags ask (unchanged without --lat/--lon); the table written to `report`.

    With `announce`, prints one line: how many classes were filtered, and where the table is.

    Raises:
        BirdclefError: invalid flags (one line naming the flag), no taxonomy, or BirdNET's files missing.
    """
    from birdclef.birdnet.geo import geo_filtered, settings_from_flags

    settings = settings_from_flags(getattr(args, "lat", None), getattr(args, "lon", None),
                                   getattr(args, "date", None), getattr(args, "week", None),
                                   getattr(args, "geo_threshold", None), getattr(args, "geo_mode", None))
    if settings is None:
        return predictor
    filtered = geo_filtered(predictor, settings, geo_taxonomy(args), report)
    if announce:
        print(filtered.geo.summary() + (f"; see {report}" if report is not None else ""))
    return filtered


def check_geo_flags(args: argparse.Namespace) -> None:
    """Validate the flags before any model loads (the same errors as :func:`apply_geo_flags`)."""
    from birdclef.birdnet.geo import settings_from_flags

    settings_from_flags(getattr(args, "lat", None), getattr(args, "lon", None), getattr(args, "date", None),
                        getattr(args, "week", None), getattr(args, "geo_threshold", None),
                        getattr(args, "geo_mode", None))
