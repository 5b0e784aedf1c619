"""Storage: the tables, the PostgreSQL/SQLite seam, the schema's migrations and every query.

Only frozen rows leave this package; it decides nothing about sequences.
"""
