"""Self-training: pseudo-label unlabelled soundscapes with teacher models (:mod:`birdclef.selftrain.pseudo`)."""
