"""The dependency pins are written once (pyproject.toml) and mirrored in environment.yml."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_pins() -> dict[str, str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project = config["project"]
    pins = {}
    for spec in (project["dependencies"] + project["optional-dependencies"]["dev"]
                 + config["tool"]["gtgen"]["weight-packages"]):
        name, _, version = spec.partition("==")
        assert version, f"pyproject.toml: {spec!r} is not pinned with =="
        pins[name.strip().lower()] = version.strip()
    return pins


def _environment_yml_pins() -> tuple[dict[str, str], str | None]:
    """Parse the pip section and the python version without a YAML dependency."""
    pins, python = {}, None
    for line in (ROOT / "environment.yml").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"-\s*python=(\S+)", line):
            python = m.group(1)
        elif m := re.fullmatch(r"-\s*([A-Za-z0-9_.\-]+)==(\S+)", line):
            pins[m.group(1).lower()] = m.group(2)
    return pins, python


def test_environment_yml_mirrors_pyproject_pins():
    yml_pins, _ = _environment_yml_pins()
    assert yml_pins == _pyproject_pins()


def test_python_versions_agree():
    _, python = _environment_yml_pins()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python is not None
    assert requires == f">={python}"


def test_torch_pair_is_pinned_together():
    pins = _pyproject_pins()
    assert (pins["torch"], pins["torchvision"]) == ("2.14.1", "0.29.1")
