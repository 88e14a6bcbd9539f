"""Which BirdNET label scores which of our classes: matched by scientific name (taxonomy.csv).

Names are compared case-insensitively with runs of whitespace collapsed (``" Turdus  merula "`` is
``"turdus merula"``). A class without a taxonomy row, without a scientific name, or whose name is not
among BirdNET's labels is *unknown*: BirdNET's own output holds NaN for it, and blends ignore it.

Example:
    >>> mapping = map_classes(["eurrob1", "frog1"], taxonomy, model.labels)
    >>> mapping.index                  # BirdNET label index per class, -1 for unknown ones
    >>> mapping.unknown_table()        # primary_label, scientific_name, reason
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from birdclef.errors import DatasetError
from birdclef.utils.io import read_csv_checked

_SPACES = re.compile(r"\s+")
UNKNOWN_COLUMNS = ["primary_label", "scientific_name", "reason"]


def normalise_name(name: object) -> str:
    """Case-folded, whitespace-collapsed scientific name; '' for a missing one."""
    if not isinstance(name, str):
        return ""
    return _SPACES.sub(" ", name).strip().casefold()


def label_scientific_name(label: str) -> str:
    """``"Turdus merula_Eurasian Blackbird"`` -> ``"Turdus merula"``."""
    return label.split("_", 1)[0]


def read_scientific_names(path: str | Path) -> dict[str, str]:
    """primary_label -> scientific_name of a taxonomy.csv (names may be blank).

    Raises:
        DatasetError: unreadable file, or no ``primary_label`` / ``scientific_name`` column.
    """
    path = Path(path)
    table = read_csv_checked(path, "a taxonomy CSV", DatasetError, "cannot read as CSV", dtype=str,
                             keep_default_na=False)
    missing = [col for col in ("primary_label", "scientific_name") if col not in table.columns]
    if missing:
        raise DatasetError(f"{path}: no {missing} column(s); BirdNET matches classes by scientific_name "
                           f"(found {list(table.columns)})")
    return dict(zip(table["primary_label"].str.strip(), table["scientific_name"]))


@dataclass(frozen=True)
class ClassMapping:
    classes: list[str]
    index: np.ndarray
    """(K,) int64: BirdNET label index of each class, -1 when unknown."""
    scientific_names: list[str]
    reasons: dict[str, str]
    """Unknown class -> why."""

    @property
    def known(self) -> np.ndarray:
        """(K,) bool: classes BirdNET scores."""
        return self.index >= 0

    @property
    def unknown(self) -> list[str]:
        return [c for c in self.classes if c in self.reasons]

    def unknown_table(self) -> pd.DataFrame:
        rows = [(c, self.scientific_names[k], self.reasons[c]) for k, c in enumerate(self.classes) if c in self.reasons]
        return pd.DataFrame(rows, columns=UNKNOWN_COLUMNS)

    def select(self, probs: np.ndarray) -> np.ndarray:
        """(N, n_labels) BirdNET probabilities -> (N, K) in class order, NaN for unknown classes."""
        out = np.full((probs.shape[0], len(self.classes)), np.nan, dtype=np.float32)
        out[:, self.known] = probs[:, self.index[self.known]]
        return out


def map_classes(classes: Sequence[str], names: dict[str, str], labels: Sequence[str]) -> ClassMapping:
    """Match each class's scientific name (from `names`, see :func:`read_scientific_names`) to BirdNET's labels."""
    lookup: dict[str, int] = {}
    for i, label in enumerate(labels):
        lookup.setdefault(normalise_name(label_scientific_name(label)), i)
    index, sci, reasons = [], [], {}
    for cls in classes:
        name = names.get(cls.strip())
        key = normalise_name(name)
        sci.append("" if name is None else str(name))
        if name is None:
            reasons[cls] = "no row in taxonomy.csv"
        elif not key:
            reasons[cls] = "no scientific_name in taxonomy.csv"
        elif key not in lookup:
            reasons[cls] = f"not among BirdNET's {len(labels)} labels"
        index.append(lookup.get(key, -1) if cls not in reasons else -1)
    return ClassMapping(list(classes), np.asarray(index, dtype=np.int64), sci, reasons)
