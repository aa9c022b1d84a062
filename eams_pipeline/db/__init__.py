"""PostgreSQL: connections, migrations, master data, the district snapshot, applying a plan."""
