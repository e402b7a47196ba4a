"""What the product imports to run is what it declares: ``pip install pywats-transport`` alone (the
README's first command) must be enough for the package, its command line, the demo and the service."""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

#: what the README's first command runs, and what `pywats-transport serve` adds
ENTRY_MODULES = ["pywats_transport", "pywats_transport.cli", "pywats_transport.demo", "pywats_transport.workload",
                 "pywats_transport.emulator", "pywats_transport.service", "pywats_transport.service.cli"]


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def _declared_closure(dist: str) -> set[str]:
    """The distribution and everything it requires without extras, recursively."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _module_level_imports(path: Path) -> set[str]:
    """Absolute imports a module makes when it is imported: at module level, outside ``try`` (a guarded
    import is optional; one inside a function happens only when that feature is used)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_what_the_main_job_imports_is_declared() -> None:
    script = ("import importlib, json, sys\n"
              f"for m in {ENTRY_MODULES!r}: importlib.import_module(m)\n"
              "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for name, m in list(sys.modules.items())"
              " if name.startswith('pywats_transport'))))")
    ours = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout)
    owners = {}
    for dist in md.distributions():
        for file in dist.files or ():
            owners[str(Path(str(dist.locate_file(file))).resolve())] = _name(dist.metadata["Name"])
    declared = _declared_closure("pywats-transport")
    missing = {}
    for path in (Path(f) for f in ours if f):
        for module in _module_level_imports(path):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in ("pywats_transport", "__future__"):
                continue
            spec = importlib.util.find_spec(module)
            assert spec is not None and spec.origin is not None, f"{path.name} imports {module}, which is not installed"
            owner = owners.get(str(Path(spec.origin).resolve()))
            if owner not in declared:
                missing[f"{path.name}: {module}"] = owner
    assert len(ours) > 20 and "pywats-transport" in declared
    assert missing == {}, "imported to run, but not required by pywats-transport (directly or through its requirements)"
