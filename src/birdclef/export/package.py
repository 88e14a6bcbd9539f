"""``birdclef package``: what an offline (Kaggle-style) notebook needs to write submission.csv.

Layout of `out`:

    models/<name>/            the exported model folder(s), copied
    wheels/                   birdclef (built from this checkout) + the inference dependencies
    requirements.txt          the dependencies, pinned to the versions installed here
    predict_submission.py     decodes, predicts, post-processes, writes submission.csv
    README.txt                the two commands to run in the notebook

The dependency list is not hand-written: a subprocess imports exactly what the script imports
(the inference job, the exported-model runtime and the backend) and the distributions of the
third-party modules it loaded are packaged -- no torch, no timm. The notebook installs with
``pip install --no-index --find-links wheels`` (nothing is fetched); the script installs nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import birdclef
from birdclef.errors import BirdclefError
from birdclef.export.runtime import PIP_PACKAGES, read_metadata

SCRIPT_NAME = "predict_submission.py"
HEAVY = ("torch", "timm", "lightning", "torchvision", "sklearn", "matplotlib", "scipy")
"""Modules an inference-only install should not need; found ones are reported."""
_IMPORTS = "birdclef.export.runtime, birdclef.infer.job, {backend}"


@dataclass
class PackageReport:
    """What :func:`package_model` wrote."""

    out: Path
    models: list[str]
    wheels: list[str]
    requirements: list[str]
    heavy_imports: list[str] = field(default_factory=list)
    """Modules from ``HEAVY`` that the inference path imports (each adds megabytes of wheels)."""

    @property
    def size_mb(self) -> float:
        return sum(p.stat().st_size for p in self.out.rglob("*") if p.is_file()) / 2**20

    def summary(self) -> str:
        heavy = f"; the inference path imports {self.heavy_imports}" if self.heavy_imports else ""
        return (f"packaged {len(self.models)} model(s) and {len(self.wheels)} wheels ({self.size_mb:.0f} MB) "
                f"in {self.out}; run: python {SCRIPT_NAME} --soundscapes DIR --out submission.csv{heavy}")


def inference_imports(backend: str, python: str = sys.executable) -> list[str]:
    """Top-level modules loaded by importing what the offline script imports (in a fresh interpreter)."""
    module = {"onnx": "onnxruntime", "openvino": "openvino"}[backend]
    code = (f"import sys, json, {_IMPORTS.format(backend=module)}; "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise BirdclefError(f"cannot import the inference path with {python}: {done.stderr.strip()[-500:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def requirements_for(modules: Sequence[str]) -> list[str]:
    """Pinned ``name==version`` of the installed distributions that provide `modules` (birdclef excluded)."""
    owners = metadata.packages_distributions()
    dists = {dist for m in modules for dist in owners.get(m, ()) if m not in ("birdclef", "_distutils_hack")}
    return sorted(f"{d}=={metadata.version(d)}" for d in dists if d.lower() != "birdclef")


def source_root() -> Path:
    """The checkout birdclef is imported from (the folder holding pyproject.toml)."""
    for parent in Path(birdclef.__file__).resolve().parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    raise BirdclefError("birdclef is not imported from a source checkout (no pyproject.toml above "
                        f"{birdclef.__file__}); pass wheel_dir with a birdclef wheel")


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise BirdclefError(f"{what} failed (pip {' '.join(args[:3])} ...): {done.stderr.strip()[-800:]}")


def collect_wheels(requirements: list[str], wheels: Path, wheel_dir: Path | None,
                   python_version: str | None, platform: str | None) -> None:
    """Build birdclef's wheel and fetch the requirements' wheels (with their dependencies) into `wheels`.

    With `wheel_dir` the wheels come from that folder (``--no-index``); otherwise from the package
    registry. `python_version` / `platform` (pip's ``--python-version`` / ``--platform``) target a
    notebook whose Python differs from this one.
    """
    wheels.mkdir(parents=True, exist_ok=True)
    local = wheel_dir and any(Path(wheel_dir).glob("birdclef-*.whl"))
    if local:
        for whl in Path(wheel_dir).glob("birdclef-*.whl"):
            shutil.copy2(whl, wheels / whl.name)
    else:
        _pip(["wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(source_root())],
             "building the birdclef wheel")
    source = ["--no-index", "--find-links", str(wheel_dir)] if wheel_dir else []
    target = (["--python-version", python_version] if python_version else []) + (["--platform", platform] if platform else [])
    _pip(["download", "-q", "--only-binary=:all:", "-d", str(wheels), *source, *target, *requirements],
         "downloading the inference wheels")


def _script(default_model: str) -> str:
    return textwrap.dedent(f'''\
        """Write submission.csv with an exported birdclef model; offline, no torch (made by `birdclef package`).

        Install first (nothing is downloaded):
            pip install --no-index --find-links wheels -r requirements.txt
            pip install --no-index --no-deps wheels/birdclef-*.whl
        then: python {SCRIPT_NAME} --soundscapes /kaggle/input/<competition>/test_soundscapes
        """
        import argparse
        import shutil
        from pathlib import Path

        HERE = Path(__file__).resolve().parent
        DEFAULT_MODEL = HERE / "models" / {default_model!r}


        def main(argv=None):
            parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
            parser.add_argument("--soundscapes", type=Path, required=True, help="folder of test soundscapes")
            parser.add_argument("--sample-submission", type=Path, default=None,
                                help="default: sample_submission.csv beside the soundscape folder, if any")
            parser.add_argument("--out", type=Path, default=Path("submission.csv"))
            parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
            parser.add_argument("--backend", choices=["onnx", "openvino"], default=None)
            parser.add_argument("--threads", type=int, default=None)
            parser.add_argument("--num-workers", type=int, default=2, help="decoding threads")
            args = parser.parse_args(argv)

            from birdclef.audio.discover import is_audio_name
            from birdclef.export.runtime import ExportedPredictor
            from birdclef.infer.job import predict_to_csv

            sample = args.sample_submission or args.soundscapes.parent / "sample_submission.csv"
            sample = sample if sample.is_file() else None
            has_audio = args.soundscapes.is_dir() and any(is_audio_name(p.name) for p in args.soundscapes.iterdir())
            if not has_audio and sample is not None:
                shutil.copyfile(sample, args.out)  # hidden test set absent (notebook's public run)
                print(f"no soundscapes in {{args.soundscapes}}; copied {{sample}} to {{args.out}}")
                return
            predictor = ExportedPredictor(args.model, backend=args.backend, threads=args.threads)
            summary = predict_to_csv(args.soundscapes, predictor, args.out, sample_submission=sample,
                                     num_workers=args.num_workers, progress=False)
            print(f"wrote {{summary.out}}: {{summary.n_rows}} rows from {{summary.n_files}} files "
                  f"in {{summary.elapsed_s:.1f}} s; {{len(summary.skipped)}} skipped")


        if __name__ == "__main__":
            main()
        ''')


def _readme(requirements: list[str]) -> str:
    return ("Offline birdclef inference (made by `birdclef package`).\n\n"
            "pip install --no-index --find-links wheels -r requirements.txt\n"
            "pip install --no-index --no-deps wheels/birdclef-*.whl\n"
            f"python {SCRIPT_NAME} --soundscapes /kaggle/input/<competition>/test_soundscapes --out submission.csv\n\n"
            f"Dependencies: {', '.join(requirements)}\n")


def package_model(models: Sequence[str | Path], out: str | Path, backend: str | None = None,
                  wheel_dir: str | Path | None = None, python_version: str | None = None,
                  platform: str | None = None) -> PackageReport:
    """Write an offline bundle: model folder(s), wheels, requirements, ``predict_submission.py``.

    Args:
        models: exported model folders; the script defaults to the first (``--model`` picks another).
        out: bundle folder (created; must not hold anything but an earlier bundle).
        backend: onnx | openvino runtime to ship (default: the first model's format).
        wheel_dir: take every wheel from this folder instead of the package registry (offline).
        python_version, platform: target another interpreter / OS (pip download's options).

    Returns:
        The report; ``heavy_imports`` lists torch / sklearn / ... modules the inference path pulls in.

    Raises:
        BirdclefError: not a model folder, an unusable `out`, or pip could not build / fetch a wheel.
    """
    out, metas = Path(out), [read_metadata(m) for m in models]
    backend = backend or metas[0]["format"]
    if backend not in PIP_PACKAGES:
        raise BirdclefError(f"unknown backend {backend!r}; choose from {list(PIP_PACKAGES)}")
    if out.exists() and any(out.iterdir()) and not (out / SCRIPT_NAME).is_file():
        raise BirdclefError(f"{out} exists and is not an earlier package; choose another --out")
    shutil.rmtree(out, ignore_errors=True)
    names = [Path(m).resolve().name for m in models]
    for model, name in zip(models, names):
        shutil.copytree(model, out / "models" / name)
    modules = inference_imports(backend)
    requirements = requirements_for(modules)
    collect_wheels(requirements, out / "wheels", Path(wheel_dir) if wheel_dir else None, python_version, platform)
    (out / "requirements.txt").write_text("\n".join(requirements) + "\n")
    (out / SCRIPT_NAME).write_text(_script(names[0]))
    (out / "README.txt").write_text(_readme(requirements))
    return PackageReport(out, names, sorted(p.name for p in (out / "wheels").glob("*.whl")), requirements,
                         sorted(set(modules) & set(HEAVY)))
