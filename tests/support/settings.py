"""Settings for tests: never read from the environment or a .env file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nurture.config import Settings
from support.paths import DATA


def make_settings(tmp_path: Path, database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "sequences_dir": DATA / "sequences",
        "templates_dir": DATA / "templates",
        "data_dir": tmp_path,
        "secret_key": "test-secret-key",
        "base_url": "http://nurture.test",
        "api_token": "test-api-token",
        "retry_base_seconds": 60,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]
