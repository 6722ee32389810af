"""Database: models, the one engine factory, migrations and the tenant-scoped repository."""
