"""Every model kind behind one interface: run folders (:mod:`~birdclef.zoo.runs`), the kind registry and one
``build_predictor``. Submodules import their heavy dependencies (torch, LiteRT, ONNX Runtime) only when used."""
