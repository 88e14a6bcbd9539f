"""The docs site: the generated CLI and config references match the code, and the site builds strictly."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from birdclef.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
HOOK = REPO / "docs" / "hooks" / "reference.py"
_FLAG = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def _hook():
    spec = importlib.util.spec_from_file_location("docs_reference_hook", HOOK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _hook()


def _sections(page: str) -> dict[str, str]:
    """``{verb: its section of the CLI page}``."""
    parts = re.split(r"^## `birdclef ([\w-]+)` \{#[\w-]+\}$", page, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2]))


def _verbs_in_top_help(parser: argparse.ArgumentParser) -> list[str]:
    """The verbs `birdclef --help` lists (one indented line per verb under VERB)."""
    text = parser.format_help()
    return re.findall(r"^    ([a-z][\w-]*)\s", text, flags=re.M)


def _flags_in_help(text: str) -> set[str]:
    """The flags of the options list of a verb's --help (each option line's invocation column)."""
    flags = set()
    for line in text.splitlines():
        if re.match(r"^  -", line):
            flags.update(_FLAG.findall(re.split(r"\s{2,}", line.strip())[0]))
    return flags


def test_cli_reference_lists_every_verb_and_flag_that_help_shows() -> None:
    parser = build_parser()
    page = ref.cli_markdown(parser)
    sections = _sections(page)
    verbs = ref.subcommands(parser)
    top = _verbs_in_top_help(parser)
    assert len(top) >= 19 and set(top) == set(verbs), "the subcommands found differ from `birdclef --help`"
    assert list(sections) == list(verbs)
    for name, (sub, _) in verbs.items():
        section = sections[name]
        shown = _flags_in_help(sub.format_help()) - {"-h", "--help"}
        from_parser = {opt for action in sub._actions for opt in action.option_strings} - {"-h", "--help"}
        assert shown == from_parser, f"{name}: --help and the parser disagree: {shown ^ from_parser}"
        documented = {flag for line in section.splitlines() if line.startswith("| `")
                      for flag in _FLAG.findall(line.split(" | ")[0])}
        missing = sorted(from_parser - documented)
        assert not missing, f"`birdclef {name}`: {missing} are in --help but not in the CLI reference"
        for action in sub._actions:
            if not action.option_strings:  # positionals, by their name in the usage line
                assert f"`{action.dest.upper()}`" in section, f"{name}: positional {action.dest} missing"
        assert f"[`{name}`](#{name})" in page, f"{name} missing from the verb table"


def test_cli_reference_shows_defaults_choices_and_help_text() -> None:
    section = _sections(ref.cli_markdown(build_parser()))["analyze"]
    row = next(line for line in section.splitlines() if line.startswith("| `--hop "))
    assert "| `5.0` |" in row and "seconds between 5 s window starts" in row
    row = next(line for line in section.splitlines() if line.startswith("| `--engine "))
    assert "`--engine {plain,dask}`" in row and "| `plain` |" in row
    row = next(line for line in section.splitlines() if line.startswith("| `--out "))
    assert "**required**" in row
    row = next(line for line in section.splitlines() if line.startswith("| `--run "))
    assert "repeatable" in row


def test_new_verbs_and_flags_appear_without_editing_the_generator() -> None:
    """What other work adds to the parser (a verb, flags on an existing verb) shows up as it is."""
    parser = argparse.ArgumentParser(prog="birdclef")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    p = sub.add_parser("review", help="listen to detections | mark them")
    p.add_argument("results", type=Path, help="results folder")
    p.add_argument("--lat", type=float, default=None, help="latitude %(default)s")
    p.add_argument("--week", type=int, default=12, choices=range(1, 49), metavar="W", help="week of the year")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--compare", nargs="+", help="score several")
    group.add_argument("--single", action="store_true")
    page = ref.cli_markdown(parser)
    section = _sections(page)["review"]
    assert "[`review`](#review) | listen to detections \\| mark them |" in page
    assert "| `RESULTS` |  | results folder |" in section
    assert "| `--lat LAT` |  | latitude None |" in section  # %(default)s expanded as --help does
    assert "| `--week W` | `12` | week of the year (one of `1`," in section
    assert "| `--compare COMPARE ...` |  | score several (not with `--single`; one of them is required) |" in section
    assert "| `--single` | off | not with `--compare`; one of them is required |" in section


SOURCE = '''
@dataclass
class A:
    x: int = 1
    """The ``x`` of :class:`~pkg.B`,
    on two lines."""
    y: str = "a"
    z: float = 2.0
    """Zed."""

    def f(self) -> None:
        """Not a field."""
'''


def test_field_docstrings_are_the_string_below_each_field() -> None:
    assert ref.field_docstrings(SOURCE) == {"A": {"x": "The `x` of `pkg.B`, on two lines.", "z": "Zed."}}


def test_config_reference_lists_every_field_with_type_default_and_docstring() -> None:
    from birdclef.config import Config, DataConfig, TrainConfig

    page = ref.config_markdown()
    keys = []

    def walk(prefix: str, cls: type) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                walk(f"{prefix}{f.name}.", hints[f.name])
            else:
                keys.append(f"{prefix}{f.name}")

    walk("", Config)
    assert len(keys) > 60
    missing = [key for key in keys if f"| `{key}` |" not in page]
    assert not missing, f"config keys missing from the reference: {missing}"
    row = next(line for line in page.splitlines() if line.startswith("| `train.folds` |"))
    assert row == ("| `train.folds` | `tuple[int, ...]` | `[0, 1, 2, 3, 4]` | Which folds to train (any subset of "
                   "range(data.n_folds)). |")
    row = next(line for line in page.splitlines() if line.startswith("| `data.window_table` |"))
    assert "| `str \\| None` | `null` |" in row and "`RUN/mil_windows.csv`" in row
    row = next(line for line in page.splitlines() if line.startswith("| `model.frontend.n_mels` |"))
    assert row.startswith("| `model.frontend.n_mels` | `int` | `128` |")
    assert DataConfig().n_folds == 5 and TrainConfig().epochs == 10  # the defaults the page shows above
    assert "| `data.n_folds` | `int` | `5` |" in page and "| `train.epochs` | `int` | `10` |" in page


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, timeout=300, env=env)


def _need_mkdocs() -> None:
    if importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("material") is None:
        pytest.skip('mkdocs / mkdocs-material not installed: pip install -c constraints.txt ".[docs]"')


@pytest.mark.slow
def test_site_builds_strictly(tmp_path: Path) -> None:
    _need_mkdocs()
    result = _mkdocs_build(REPO / "mkdocs.yml", tmp_path / "site")
    assert result.returncode == 0, result.stderr[-3000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text()
    config = (tmp_path / "site" / "reference" / "config" / "index.html").read_text()
    assert 'id="train"' in cli and "birdclef train" in cli
    assert "train.epochs" in config
    for page in ("get-started", "kaggle", "ecologist", "models", "architecture", "benchmarks"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page
    assert not (tmp_path / "site" / "hooks").exists(), "the hook file must not be published"


@pytest.mark.slow
def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    _need_mkdocs()
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with (tmp_path / "docs" / "index.md").open("a") as page:
        page.write("\nSee [the CLI](reference/cli.md#no-such-verb) and [a page](missing.md).\n")
    result = _mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "missing.md" in result.stderr and "no-such-verb" in result.stderr
