"""Models: BirdClassifier (log-mel front end -> timm backbone -> registered head) and checkpoints.

Example:
    >>> from birdclef.models import create_model, load_checkpoint, save_checkpoint
"""

from birdclef.models.classifier import BirdClassifier, PretrainedWeightsError
from birdclef.models.factory import (CheckpointError, LoadedModel, create_model, list_heads, load_checkpoint,
                                     save_checkpoint)
from birdclef.models.heads import create_head

__all__ = ["BirdClassifier", "CheckpointError", "LoadedModel", "PretrainedWeightsError", "create_head",
           "create_model", "list_heads", "load_checkpoint", "save_checkpoint"]
