"""The suite's own plugin distributions under ``tests/fixtures`` (one that works, two deliberately broken,
one that clashes), installed for the test session and the processes it starts, and nowhere else.

Installed into the developer's environment (as they once were, by ``requirements-dev.txt``), every
``pywats-transport`` command run there afterwards, the README's demo included, began by warning about
the broken ones. Here each becomes what ``pip install`` would leave, a package beside a ``.dist-info``
holding its entry points, in a folder of its own that ``sys.path`` and ``PYTHONPATH`` name: entry points
are found the way they are for any installed plugin."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest's own dependency
    import tomli as tomllib

FIXTURES = Path(__file__).parent / "fixtures"
PROJECTS = ("testplugin", "brokenplugin", "clashplugin")
#: names the folder once it exists: the processes the session starts (pytest-xdist's workers too) reuse it
ENV = "PYWATS_TRANSPORT_TEST_PLUGINS"


def install() -> Path:
    """The folder the fixture distributions are installed in, made on the first call of a session."""
    made = os.environ.get(ENV)
    site = Path(made) if made else _lay_out(Path(tempfile.mkdtemp(prefix="pywats-test-plugins-")))
    if not made:
        os.environ[ENV] = str(site)
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH")) if p)
        atexit.register(shutil.rmtree, site, True)
    if str(site) not in sys.path:
        sys.path.insert(0, str(site))
    return site


def _lay_out(site: Path) -> Path:
    for name in PROJECTS:
        pyproject = tomllib.loads((FIXTURES / name / "pyproject.toml").read_text())
        project = pyproject["project"]
        for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
            shutil.copytree(FIXTURES / name / package, site / package, ignore=shutil.ignore_patterns("__pycache__"))
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
        points = project["entry-points"]["pywats_transport"]
        (info / "entry_points.txt").write_text(
            "[pywats_transport]\n" + "".join(f"{key} = {value}\n" for key, value in points.items()))
    return site
