"""Importable test helpers (``from fakes.onnx_models import ...``; ``tests/`` is on ``sys.path`` through its
conftest.py): tiny stand-ins for model files birdclef reads but never ships."""
