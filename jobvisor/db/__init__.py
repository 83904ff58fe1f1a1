"""PostgreSQL access: where the database is, connections, migrations and the job store."""
