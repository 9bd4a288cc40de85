"""The base's database layer: the pool, named queries, migrations, error translation."""
