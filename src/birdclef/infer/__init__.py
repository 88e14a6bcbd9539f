"""Inference on soundscapes: prediction tables, post-processing and ensembling.

A prediction table is a pandas DataFrame with a ``row_id`` column (``<soundscape_stem>_<end_s>``)
followed by one float column per class, in submission order. ``postprocess`` holds the temporal
smoothing and rank-based power adjustment; ``ensemble`` holds fold soft-voting and the weighted
blend of several models' tables aligned on ``row_id``.
"""
