"""The pinned install: constraints.txt covers every requirement and is what `make install` installed."""

from __future__ import annotations

import importlib.metadata as metadata
import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
CONSTRAINTS = REPO / "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)$")


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(CONSTRAINTS.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = _PIN.match(line)
        assert match, f"constraints.txt:{number}: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _requirements() -> list[Requirement]:
    """Every requirement of the package and its extras, as installed (the editable install's metadata)."""
    reqs = [Requirement(r) for r in metadata.requires("birdclef") or []]
    return [r for r in reqs if canonicalize_name(r.name) != "birdclef"]


def test_every_requirement_is_pinned_within_its_range() -> None:
    pins = _pins()
    for req in _requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} ({req}) has no pin in constraints.txt: run `make lock`"
        assert Version(pins[name]) in req.specifier, f"constraints.txt pins {name}=={pins[name]} outside {req}"


def test_installed_versions_are_the_pinned_ones() -> None:
    """`make install` uses `pip -c constraints.txt`: a drifted environment (or a stale lock) fails here."""
    if not any(canonicalize_name(d.metadata["Name"]) == "torch" for d in metadata.distributions()):
        pytest.skip("a light install without the dev extras")
    drifted = []
    for name, version in _pins().items():
        if name == "pip":
            continue  # pip upgrades itself outside the project's control (e.g. inside tox or pipx)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific package (e.g. CUDA wheels) that this machine does not need
        if Version(installed) != Version(version):
            drifted.append(f"{name} {installed} (pinned {version})")
    assert not drifted, "installed versions differ from constraints.txt: " + ", ".join(drifted)
