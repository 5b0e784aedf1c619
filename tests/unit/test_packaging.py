"""What the wheel holds, checked without building one: pyproject.toml lists nurture's packages
by hand (``find`` cannot see the migrations at the top of the repository, installed as
``nurture.migrations``), so a new folder under nurture/ must be added to the list,
or an installed nurture would lack it."""

from __future__ import annotations

import tomllib

from support.paths import REPO


def listed_packages() -> set[str]:
    with (REPO / "pyproject.toml").open("rb") as f:
        return set(tomllib.load(f)["tool"]["setuptools"]["packages"])


def test_every_folder_under_nurture_is_a_listed_package() -> None:
    package = REPO / "nurture"
    folders = {
        ".".join(p.relative_to(REPO).parts)
        for p in [package, *package.rglob("*")]
        if p.is_dir() and "__pycache__" not in p.parts
    }
    missing = sorted(folders - listed_packages())
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"
