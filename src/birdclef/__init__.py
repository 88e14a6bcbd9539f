"""birdclef: find which animals call in long field recordings (BirdCLEF recipes as a toolkit).

The torch-based parts of the public API (`create_model`, `predict_soundscapes`) are imported on
first use, so reading audio, checking data and scoring work without importing torch.
"""

from __future__ import annotations

from typing import Any

from birdclef.audio.io import load_audio
from birdclef.errors import AudioError, BirdclefError, ConfigError, DatasetError, SubmissionError
from birdclef.eval.metrics import macro_roc_auc

__version__ = "0.1.0"

_LAZY = {
    "create_model": "birdclef.models",
    "load_checkpoint": "birdclef.models",
    "predict_soundscapes": "birdclef.infer.predict",
    "train_kfold": "birdclef.train.kfold",
}

__all__ = ["AudioError", "BirdclefError", "ConfigError", "DatasetError", "SubmissionError", "load_audio",
           "macro_roc_auc", "__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'birdclef' has no attribute {name!r}")
