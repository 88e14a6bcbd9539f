"""Scoring: the competition metric (macro ROC-AUC), per-class reports and submission checks."""

from birdclef.eval.metrics import (
    EvalReport,
    align_submission,
    evaluate_submission,
    macro_roc_auc,
    per_class_roc_auc,
)

__all__ = ["EvalReport", "align_submission", "evaluate_submission", "macro_roc_auc", "per_class_roc_auc"]
