"""The schema's Alembic migrations (``env.py``, ``script.py.mako``, ``versions/``).

Kept at the top of the repository and installed as the package ``nurture.migrations`` (see
``[tool.setuptools.package-dir]`` in pyproject.toml), so an installed nurture migrates a
database with no source tree; ``nurture.db.migrate`` finds this folder with importlib.resources.
"""
