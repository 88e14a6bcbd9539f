import subprocess
import sys


def test_light_verbs_do_not_import_torch():
    code = ("import sys, birdclef, birdclef.cli, birdclef.data.check, birdclef.data.cache, birdclef.eval.metrics, "
            "birdclef.eval.report, birdclef.data.synth, birdclef.infer.postprocess, birdclef.infer.ensemble, "
            "birdclef.infer.base, birdclef.infer.job; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_resolves_lazily():
    import birdclef

    assert callable(birdclef.load_audio) and callable(birdclef.macro_roc_auc)
    assert callable(birdclef.predict_soundscapes) and callable(birdclef.create_model)
