"""The lock file ``make setup`` installs from (issue 18): one exact pin per package, each inside pyproject.toml's
range, torch at the Makefile's version, and (in the project's own venv) exactly what is installed.

Read from the files only: no network, no pip.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+
requirements = pytest.importorskip("packaging.requirements")
from packaging.utils import canonicalize_name  # noqa: E402
from packaging.version import Version  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAKEFILE = (ROOT / "Makefile").read_text()


def _make_var(name: str) -> str:
    found = re.search(rf"^{name}\s*:=\s*(.+?)\s*$", MAKEFILE, re.MULTILINE)
    assert found, f"Makefile sets no {name}"
    return found.group(1)


LOCK = ROOT / _make_var("LOCK")
#: what ``make setup`` installs with ``pip install --no-deps`` (its requirements are not installed, so not locked)
NO_DEPS = [canonicalize_name(n) for n in re.findall(r"--no-deps\s+([A-Za-z0-9._-]+)\s*$", MAKEFILE, re.MULTILINE)]


def read_lock(text: str) -> dict[str, Version]:
    """``name==version`` lines (comments and blank lines aside) as canonical name -> version; anything else fails."""
    pins: dict[str, Version] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;=<>!~,]+)", line)
        assert found, f"line {number} is not an exact name==version pin: {raw!r}"
        name = canonicalize_name(found.group(1))
        assert name not in pins, f"{name} is pinned twice (line {number})"
        pins[name] = Version(found.group(2))
    return pins


@pytest.fixture(scope="module")
def pins() -> dict[str, Version]:
    assert LOCK.is_file(), f"{LOCK} is missing: run `make lock`"
    return read_lock(LOCK.read_text())


def setup_requirements() -> list[requirements.Requirement]:
    """What ``make setup`` asks for: pyproject's dependencies and the extras it installs."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = [e.strip() for e in _make_var("EXTRAS").split(",") if e.strip()]
    missing = [e for e in extras if e not in project.get("optional-dependencies", {})]
    assert not missing, f"the Makefile installs extras pyproject.toml does not define: {missing}"
    reqs = [requirements.Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        reqs += [requirements.Requirement(r) for r in project["optional-dependencies"][extra]]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]


def test_the_lock_reader_refuses_ranges_and_duplicates():
    assert read_lock("# c\n\nTorch==2.13.0\nPyYAML==6.0.4\n") == {
        "torch": Version("2.13.0"),
        "pyyaml": Version("6.0.4"),
    }
    for bad in ("numpy>=1.24\n", "numpy\n", "numpy==1.0\nNumPy==1.1\n", "numpy==1.0; python_version<'3'\n"):
        with pytest.raises(AssertionError):
            read_lock(bad)


def test_every_dependency_setup_installs_has_one_pin_inside_its_range(pins):
    reqs = setup_requirements()
    assert {canonicalize_name(r.name) for r in reqs} >= {"torch", "transformers", "accelerate", "pytest"}
    outside = {
        r.name: str(pins.get(canonicalize_name(r.name)))
        for r in reqs
        if canonicalize_name(r.name) not in pins or not r.specifier.contains(pins[canonicalize_name(r.name)], True)
    }
    assert not outside, f"not pinned, or pinned outside pyproject's range (run `make lock`): {outside}"


def test_torch_and_the_no_deps_installs_are_pinned_as_the_makefile_installs_them(pins):
    torch = requirements.Requirement(_make_var("TORCH"))
    assert str(torch.specifier).startswith("==")
    assert pins["torch"] == Version(str(torch.specifier)[2:])
    assert NO_DEPS and all(n in pins for n in NO_DEPS), NO_DEPS
    assert "fewlabels" not in pins and "pip" in pins


@pytest.mark.skipif(
    Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(), reason="checks the project's own venv (make setup)"
)
def test_the_project_venv_holds_exactly_the_locked_versions_and_the_lock_is_closed(pins):
    installed = {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}
    differ = {
        name: (str(pin), installed[name].version if name in installed else None)
        for name, pin in pins.items()
        if name not in installed or Version(installed[name].version).public != str(pin)
    }
    assert not differ, f"locked vs installed (rerun `make setup`): {differ}"
    # every requirement of a locked package is itself locked: nothing setup installs escapes the lock
    unlocked = set()
    for name in set(pins) - set(NO_DEPS):
        for raw in installed[name].requires or []:
            req = requirements.Requirement(raw)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                if canonicalize_name(req.name) not in pins:
                    unlocked.add(f"{req.name} (needed by {name})")
    assert not unlocked, sorted(unlocked)
