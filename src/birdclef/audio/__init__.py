"""Audio decoding and 5 s window selection."""

from birdclef.audio.io import AudioInfo, audio_info, load_audio, write_audio

__all__ = ["AudioInfo", "audio_info", "load_audio", "write_audio"]
