"""Use cases: one upload start to finish, over the core and the adapters (db, io)."""
