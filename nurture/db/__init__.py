"""Storage: SQLAlchemy models, engines and every query. ORM objects never leave this package."""
