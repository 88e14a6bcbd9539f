"""The import graph stays as the model-zoo redesign left it: no circles, and no new import back up a layer."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO

_spec = importlib.util.spec_from_file_location("import_layers", REPO / "scripts" / "import_layers.py")
import_layers = importlib.util.module_from_spec(_spec)
sys.modules["import_layers"] = import_layers
_spec.loader.exec_module(import_layers)

KNOWN_BACK_UP = {  # BirdNET as a timm-like backbone (model.backbone: birdnet) is built by the models layer
    "birdclef.models.classifier (layer 3) -> birdclef.birdnet.frontend (layer 4)",
    "birdclef.models.classifier (layer 3) -> birdclef.birdnet.model (layer 4)",
    "birdclef.models.classifier (layer 3) -> birdclef.birdnet.torch_net (layer 4)",
}


def test_the_package_has_no_import_circle_and_no_new_import_up_a_layer() -> None:
    graph = import_layers.import_graph(REPO / "src")
    assert import_layers.circles(graph) == []
    assert set(import_layers.back_up_imports(graph)) <= KNOWN_BACK_UP


def test_the_checks_see_a_circle_and_an_import_up_a_layer(tmp_path) -> None:
    package = tmp_path / "birdclef"
    (package / "data").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "data" / "__init__.py").write_text("")
    (package / "data" / "a.py").write_text("def f():\n    from birdclef.cli import main\n")
    (package / "cli.py").write_text("from birdclef.data import a\n")
    graph = import_layers.import_graph(tmp_path)
    assert import_layers.circles(graph) == [["birdclef.cli", "birdclef.data.a"]]
    assert import_layers.back_up_imports(graph) == ["birdclef.data.a (layer 2) -> birdclef.cli (layer 6)"]
