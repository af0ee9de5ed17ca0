"""Operating Tuneboard: `tuneboard up`'s supervisor, embedded Redis, migrations, logs, health and metrics."""
