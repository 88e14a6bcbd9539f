"""Spectrogram features: numpy filterbank and energy mel (no torch) and the torch LogMel module."""
