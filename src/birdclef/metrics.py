"""Shortcut so `from birdclef.metrics import macro_roc_auc` works; the code lives in :mod:`birdclef.eval.metrics`."""

from birdclef.eval.metrics import EvalReport, evaluate_submission, macro_roc_auc, per_class_roc_auc  # noqa: F401
