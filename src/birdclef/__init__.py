"""birdclef: find which animals call in long field recordings (BirdCLEF recipes as a toolkit)."""

from birdclef.audio.io import load_audio
from birdclef.errors import AudioError, BirdclefError, ConfigError, DatasetError, SubmissionError

__version__ = "0.1.0"

__all__ = ["AudioError", "BirdclefError", "ConfigError", "DatasetError", "SubmissionError", "load_audio", "__version__"]
