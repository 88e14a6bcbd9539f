"""Self-training on unlabelled soundscapes.

- :mod:`birdclef.selftrain.pseudo`: ``birdclef pseudo``, teacher models' soft labels of every 5 s window;
- :mod:`birdclef.selftrain.rounds`: ``birdclef selftrain``, noisy-student rounds with a stopping rule;
- :mod:`birdclef.selftrain.distill`: ``birdclef distill``, an ensemble taught to one small exported CPU student.

Training on the tables is ``train --pseudo`` (:mod:`birdclef.data.examples`, and
:mod:`birdclef.birdnet.head_pseudo` for BirdNET heads); the table format and the fold rule are
:mod:`birdclef.data.pseudo`.
"""
