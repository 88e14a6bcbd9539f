"""The models of ``birdclef analyze``, built from its command-line flags (here, and again on each Dask worker).

The flags are those of ``predict`` and mean the same (:func:`birdclef.cli._predictor` builds the runs, the
exported model and blends), except BirdNET alone: an archive table holds NaN, so the classes BirdNET does not
know stay NaN (listed in ``OUT/birdnet_unknown.csv``) unless ``--unknown-fill`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor


def build_predictor(args: argparse.Namespace, report: bool = False) -> Predictor:
    """The predictor the flags ask for, location filter included (``--lat``/``--lon``); `report` writes the BirdNET
    unknown-class list and the filter's ``geo_filter.csv`` into ``args.out`` and prints the filter's line."""
    from birdclef.cli_geo import apply_geo_flags, check_geo_flags

    check_geo_flags(args)  # before any model loads
    if args.birdnet and args.runs is None and args.model is None:
        predictor = _birdnet_alone(args, report)
    else:
        from birdclef.cli import _predictor

        as_predict = argparse.Namespace(**{**vars(args), "sample_submission": None,
                                           "out": Path(args.out) / "detections.parquet"})
        predictor = _predictor(as_predict)
    return apply_geo_flags(args, predictor, Path(args.out) / "geo_filter.csv" if report else None, announce=report)


def _birdnet_alone(args: argparse.Namespace, report: bool) -> Predictor:
    from birdclef.birdnet.build import BIRDNET_DEFAULTS, resolve_classes
    from birdclef.birdnet.classes import read_scientific_names
    from birdclef.birdnet.predictor import BirdnetPredictor
    from birdclef.infer.blend import FilledPredictor
    from birdclef.infer.settings import apply_overrides
    from birdclef.utils.io import write_csv_atomic

    if args.unknown_fill is not None and not 0.0 <= args.unknown_fill <= 1.0:
        raise BirdclefError(f"--unknown-fill must be a probability in [0, 1], got {args.unknown_fill}")
    infer = apply_overrides(BIRDNET_DEFAULTS, args.config, args.overrides)
    classes, names = resolve_classes(args.data, args.taxonomy, None)
    predictor = BirdnetPredictor(classes, read_scientific_names(names), infer, model_path=args.birdnet_model,
                                 threads=args.threads)
    if report and predictor.unscored:
        write_csv_atomic(predictor.mapping.unknown_table(), Path(args.out) / "birdnet_unknown.csv")
    return predictor if args.unknown_fill is None else FilledPredictor(predictor, args.unknown_fill)
