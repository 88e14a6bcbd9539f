"""Which ``infer`` settings (batch size, post-processing) a prediction uses: one rule for every verb.

The default is what was stored with the model: a training run's ``config.yaml`` ``infer`` section
(for ``RUN/foldK/best.pt`` the run's; for a run or checkpoint without one, the checkpoint's own
config), or for an exported model folder the settings stored at export. A blend of runs uses the
first run's, with a note when the others differ. ``-c FILE`` and then ``--set infer.KEY=VALUE``
are applied on top. ``predict --run``, ``predict --model`` (any backend) and ``export`` all resolve
their settings here.

Example:
    >>> resolved = resolve_infer(runs=[Path("runs/a")], overrides=["infer.smoothing=true"])
    >>> resolved.config.smoothing
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from birdclef.config import Config, InferConfig, config_from_dict, merge_config, read_overrides
from birdclef.errors import BirdclefError, ConfigError
from birdclef.zoo.runs import Run



@dataclass
class ResolvedInfer:
    config: InferConfig
    source: str
    """Where the defaults came from (a config.yaml, a checkpoint, a model's metadata)."""
    notes: list[str] = field(default_factory=list)
    """Things the user should know, e.g. blended runs whose stored settings differ."""


def _infer_section(data: object, source: Path) -> InferConfig:
    if not isinstance(data, dict) or not isinstance(data.get("infer", {}), dict):
        raise ConfigError(f"{source}: expected a mapping with an 'infer' section")
    try:
        return config_from_dict({"infer": data.get("infer") or {}}).infer
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def stored_run_infer(run: str | Path, fallback: InferConfig | None = None) -> tuple[InferConfig, str]:
    """The infer settings stored with a run folder or best.pt, and where they came from.

    Args:
        run: run folder or checkpoint file.
        fallback: the checkpoint's config when already loaded (saves loading it again when the run
            has no config.yaml).

    Raises:
        ConfigError: the config.yaml is unreadable or its infer section invalid.
        BirdclefError: no config.yaml and no finished checkpoint to read.
    """
    opened = Run.open(run)
    if opened.config_file is not None:
        return _infer_section(opened.config, opened.config_file), str(opened.config_file)
    if fallback is not None:
        return fallback, f"{run} (checkpoint config)"
    from birdclef.models import load_checkpoint  # imports torch: only for a run without config.yaml

    checkpoint = opened.checkpoints[0]
    return load_checkpoint(checkpoint, map_location="cpu").config.infer, f"{checkpoint} (checkpoint config)"


def stored_model_infer(model_dir: str | Path) -> tuple[InferConfig, str]:
    """The infer settings stored in an exported model folder's metadata."""
    from birdclef.export.runtime import METADATA, read_metadata  # no torch, no runtime import at module level

    path = Path(model_dir) / METADATA
    return _infer_section({"infer": read_metadata(model_dir).get("infer") or {}}, path), str(path)


def apply_overrides(base: InferConfig, config_file: str | Path | None = None,
                    overrides: Sequence[str] = ()) -> InferConfig:
    """`base`, then the YAML file's sections, then dotted ``--set`` overrides (only ``infer`` is kept)."""
    cfg = Config(infer=base)
    if config_file is not None:
        cfg = merge_config(cfg, read_overrides(config_file))
    return merge_config(cfg, list(overrides)).infer


def resolve_infer(runs: Sequence[str | Path] | None = None, model: str | Path | None = None,
                  config_file: str | Path | None = None, overrides: Sequence[str] = ()) -> ResolvedInfer:
    """The infer settings of a prediction (module docstring): stored defaults, then `-c`, then `--set`.

    Args:
        runs: run folders or best.pt files (a blend: the first run's settings).
        model: an exported model folder (instead of `runs`).
        config_file: a YAML of overrides (``-c``).
        overrides: ``section.key=value`` strings (``--set``).

    Raises:
        BirdclefError: neither or both of `runs` and `model`; an unreadable stored config.
        ConfigError: an invalid override.
    """
    if (not runs) == (model is None):
        raise BirdclefError("resolve_infer needs either runs or a model folder")
    notes: list[str] = []
    if model is not None:
        base, source = stored_model_infer(model)
    else:
        base, source = stored_run_infer(runs[0])
        differing = [str(r) for r in runs[1:] if stored_run_infer(r)[0] != base]
        if differing:
            notes.append(f"blended runs store other infer settings than {runs[0]} ({', '.join(differing)}); "
                         f"using {runs[0]}'s, change them with --set infer.KEY=VALUE")
    config = apply_overrides(base, config_file, overrides)
    if config_file is not None or overrides:
        source += " + " + " + ".join(([f"-c {config_file}"] if config_file is not None else [])
                                      + (["--set"] if overrides else []))
    return ResolvedInfer(config, source, notes)
