"""Fast CPU inference: export runs to one ONNX / OpenVINO graph, run it without torch, plan, package.

- :func:`export_model` (``birdclef export``): runs -> parity-checked model folder (needs torch).
- :class:`ExportedPredictor` (``birdclef predict --model``): runs a model folder with onnxruntime or
  openvino and numpy only.
- :func:`plan_budget` (``birdclef plan``): times model folders here and says which fit a CPU budget.
- :func:`package_model` (``birdclef package``): model + wheels + script for an offline notebook.

Names are imported on first use, so ``import birdclef.export`` pulls in neither torch nor a runtime.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "export_model": "birdclef.export.export",
    "ExportReport": "birdclef.export.export",
    "ParityError": "birdclef.export.export",
    "ExportedPredictor": "birdclef.export.runtime",
    "BackendUnavailableError": "birdclef.export.runtime",
    "available_backends": "birdclef.export.runtime",
    "plan_budget": "birdclef.export.plan",
    "BudgetPlan": "birdclef.export.plan",
    "package_model": "birdclef.export.package",
    "PackageReport": "birdclef.export.package",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birdclef.export' has no attribute {name!r}")
