"""Fixtures shared by every test. Stray NURTURE_* variables are removed so that a developer's
shell or .env can never change a test; PostgreSQL comes from NURTURE_TEST_DATABASE_URL."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from nurture.db.connect import normalize_url
from nurture.db.migrate import upgrade

PG_URL = os.environ.get("NURTURE_TEST_DATABASE_URL")
IN_CI = os.environ.get("CI") == "true"

for _name in list(os.environ):
    if _name.startswith("NURTURE_"):
        del os.environ[_name]


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A stray .env or nurture.db in the developer's directory must not leak in.
    monkeypatch.chdir(tmp_path)


def _postgres_schema_url() -> Iterator[str]:
    if not PG_URL:
        if IN_CI:
            pytest.fail("CI=true but NURTURE_TEST_DATABASE_URL is not set")
        pytest.skip("NURTURE_TEST_DATABASE_URL is not set")
    base = normalize_url(PG_URL)
    schema = "t_" + uuid.uuid4().hex[:12]
    admin = create_engine(base)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database with no tables, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'nurture.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def database_url(empty_database_url: str) -> str:
    """A database migrated to head, on each backend."""
    upgrade(empty_database_url)
    return empty_database_url
