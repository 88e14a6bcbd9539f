"""Taxon specialists: a run trained on a subset of the data's classes (``data.classes``, ``train --classes``).

The BirdCLEF+ 2026 winners trained specialists (an Amphibia-only or Insecta-only CNN) on their own and blended
them back into the full label space where they score (+0.002-0.004 macro ROC-AUC). ``data.classes`` names the
subset: taxon groups (taxonomy.csv's ``class_name``, case-insensitive: ``Insecta``), primary labels, or both.

What a specialist trains on:

- **Targets** are the full targets' columns of the subset, so secondary labels outside it are ignored.
- **Clips of other classes** stay as negatives of every specialist class (``data.class_negatives: true``, the
  default): a specialist that never hears other taxa fires on them in a soundscape. ``false`` drops every clip
  without a positive target in the subset (a clip of another class *with* a secondary label of the subset stays).
- **Folds** are those of a full run on the same data: :func:`~birdclef.data.folds.assign_folds` runs over every
  clip, then clips are selected, so out-of-fold tables, the fold rule of pseudo-labels and blends line up.
- **Pseudo-label and review tables** are read against the full class list, then cut to the subset's columns.

Its checkpoints hold only the subset's classes (what :attr:`birdclef.zoo.runs.Run.classes` reads), and the run
records the subset in ``RUN/classes.json`` (:data:`SUBSET_RECORD`): the classes, the groups and labels named, the
data's full class list and how many clips trained. ``birdclef predict`` blends a specialist with full runs by
scattering its columns into the blend's class list (NaN where it does not score: :mod:`birdclef.zoo.build`).

Example:
    >>> subset = resolve_subset(["Insecta", "bbb"], all_classes, Path("data/taxonomy.csv"))
    >>> subset.classes, subset.groups, subset.labels     # (['bbb', 'ins1', 'ins2'], ('Insecta',), ('bbb',))
    >>> targets = subset.select(full_targets)               # (N, 3)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.data.pseudo import PseudoLabels
from birdclef.errors import ConfigError, DatasetError
from birdclef.utils.io import write_json_atomic

SUBSET_RECORD = "classes.json"
"""``RUN/classes.json``: a specialist's classes and the data's full list (written for subset runs only)."""
GROUP_COLUMN = "class_name"
"""taxonomy.csv's taxon-group column (Aves, Amphibia, Insecta, Mammalia, Reptilia)."""
_SHOWN = 5
"""How many valid groups / labels an error shows."""


@dataclass(frozen=True)
class ClassSubset:
    """The classes a run trains on: all of the data's, or a specialist's subset (module docstring)."""

    all_classes: tuple[str, ...]
    """The data's classes in submission order."""
    classes: tuple[str, ...]
    """The run's classes, in the same order (all of them for a full run)."""
    groups: tuple[str, ...] = ()
    """Taxon groups named (as the taxonomy spells them)."""
    labels: tuple[str, ...] = ()
    """Primary labels named."""
    negatives: bool = True
    """Clips without a positive of the subset stay as negatives (``data.class_negatives``)."""

    @property
    def is_full(self) -> bool:
        """True for a run on every class (nothing was named)."""
        return not (self.groups or self.labels)

    @property
    def columns(self) -> np.ndarray:
        """(K_subset,) int64 positions of :attr:`classes` in :attr:`all_classes`."""
        where = {c: k for k, c in enumerate(self.all_classes)}
        return np.asarray([where[c] for c in self.classes], np.int64)

    def select(self, targets: np.ndarray) -> np.ndarray:
        """(N, K_subset) columns of (N, K_all) `targets` (or masks); `targets` itself for a full run."""
        return targets if self.is_full else np.ascontiguousarray(targets[:, self.columns])

    def kept_clips(self, targets: np.ndarray) -> np.ndarray:
        """(N,) bool: the clips that train, given their (N, K_subset) targets: all, or (negatives dropped) those
        with a positive target of the subset."""
        if self.negatives or self.is_full:
            return np.ones(len(targets), bool)
        return (np.asarray(targets) > 0).any(axis=1)

    def check_clips(self, targets: np.ndarray, where: Path) -> None:
        """Refuse a subset none of whose classes has a training clip (the specialist would learn nothing).

        Args:
            targets: (N, K_subset) targets of the clips.
            where: the wave cache the clips come from (named in the error).

        Raises:
            DatasetError: no clip has a positive target among :attr:`classes`.
        """
        if not self.is_full and not (np.asarray(targets) > 0).any():
            raise DatasetError(f"data.classes {self.named()}: none of its {len(self.classes)} classes "
                               f"({', '.join(self.classes[:_SHOWN])}) has a training clip in {where} (train.csv "
                               "after data.max_files); a specialist needs clips of its classes")

    def named(self) -> list[str]:
        """What ``data.classes`` named: groups, then labels."""
        return [*self.groups, *self.labels]

    def record(self, n_clips: int, n_train_clips: int) -> dict:
        """The JSON of ``RUN/classes.json``."""
        return {"classes": list(self.classes), "groups": list(self.groups), "labels": list(self.labels),
                "class_negatives": self.negatives, "n_classes": len(self.classes),
                "n_all_classes": len(self.all_classes), "all_classes": list(self.all_classes),
                "n_clips": int(n_clips), "n_train_clips": int(n_train_clips)}


def _taxon_groups(taxonomy: Path | None) -> dict[str, str]:
    """primary_label -> taxon group of taxonomy.csv ({} when there is no file or no group column)."""
    if taxonomy is None or not Path(taxonomy).is_file():
        return {}
    try:
        table = pd.read_csv(taxonomy, dtype=str)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DatasetError(f"{taxonomy}: cannot read the taxonomy ({exc})") from None
    if not {"primary_label", GROUP_COLUMN} <= set(table.columns):
        return {}
    table = table.dropna(subset=["primary_label", GROUP_COLUMN])
    return dict(zip(table["primary_label"].str.strip(), table[GROUP_COLUMN].str.strip()))


def resolve_subset(names: Sequence[str], all_classes: Sequence[str], taxonomy: Path | None,
                   negatives: bool = True) -> ClassSubset:
    """The subset `names` asks for: each a primary label of `all_classes` (exact), else a taxon group of
    `taxonomy` (``class_name``, case-insensitive). Empty `names`: every class.

    Raises:
        ConfigError: a name that is neither (one line naming a few valid groups and labels), or groups whose
            labels are none of `all_classes`.
    """
    all_classes = tuple(str(c) for c in all_classes)
    if not names:
        return ClassSubset(all_classes, all_classes, negatives=negatives)
    group_of = _taxon_groups(taxonomy)
    spelled = {g.lower(): g for g in group_of.values()}
    known = set(all_classes)
    groups, labels, unknown = [], [], []
    for raw in names:
        name = str(raw).strip()
        if name in known:
            labels.append(name)
        elif name.lower() in spelled:
            groups.append(spelled[name.lower()])
        else:
            unknown.append(name)
    if unknown:
        shown = sorted(set(group_of.values()))[:_SHOWN]
        groups_text = f"taxon groups {', '.join(shown)}" if shown else f"no taxon groups ({taxonomy} has no " \
                                                                        f"{GROUP_COLUMN} column)"
        raise ConfigError(f"data.classes: unknown {', '.join(map(repr, unknown))}; give {groups_text}, or primary "
                          f"labels such as {', '.join(all_classes[:_SHOWN])}")
    groups, labels = tuple(dict.fromkeys(groups)), tuple(dict.fromkeys(labels))
    chosen = set(labels) | {c for c in all_classes if group_of.get(c) in groups}
    classes = tuple(c for c in all_classes if c in chosen)
    if not classes:
        raise ConfigError(f"data.classes {list(groups)}: no class of the data's class list (sample_submission.csv) "
                          f"is in these groups of {taxonomy}")
    return ClassSubset(all_classes, classes, groups, labels, negatives)


def subset_of(config_data, all_classes: Sequence[str], taxonomy: Path | None) -> ClassSubset:
    """:func:`resolve_subset` of a config's ``data.classes`` / ``data.class_negatives``."""
    return resolve_subset(config_data.classes, all_classes, taxonomy, config_data.class_negatives)


def cut_labels(labels: PseudoLabels | None, subset: ClassSubset) -> PseudoLabels | None:
    """A pseudo-label or review table read against :attr:`ClassSubset.all_classes`, cut to the subset's columns."""
    if labels is None or subset.is_full:
        return labels
    return replace(labels, targets=subset.select(labels.targets), mask=subset.select(labels.mask))


def subset_summary(subset: ClassSubset, n_train_clips: int) -> dict:
    """The keys a specialist adds to ``RUN/summary.json`` ({} for a full run)."""
    return {} if subset.is_full else {"specialist": subset.named(), "n_train_clips": int(n_train_clips)}


def record_subset(run: Path, subset: ClassSubset, n_clips: int, n_train_clips: int) -> None:
    """Write ``RUN/classes.json`` for a specialist (nothing for a full run)."""
    if not subset.is_full:
        write_json_atomic(subset.record(n_clips, n_train_clips), Path(run) / SUBSET_RECORD)
