"""The three silent breakages of the pinned set (pandas 3, fastapi > 0.150, SQLAlchemy 2.1) must not come back."""

import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def test_versions_that_break_silently_are_held():
    assert Version(version("pandas")) < Version("3"), "pandas 3 breaks `import evidently`"
    assert Version(version("fastapi")) < Version("0.151"), "newer fastapi breaks the Prefect server"
    assert Version(version("sqlalchemy")) < Version("2.1"), "SQLAlchemy 2.1 stops Prefect cron schedules"


def test_every_exact_pin_in_pyproject_is_what_is_installed():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in deps:
        if "==" in dep:
            name, wanted = dep.split("==")
            name = name.split("[")[0]
            assert version(name).split("+")[0] == wanted.split()[0], name


def test_evidently_imports_next_to_the_pinned_pandas():
    import evidently
    from evidently import Dataset, DataDefinition, Report  # noqa: F401

    assert evidently.__version__.startswith("0.7")
