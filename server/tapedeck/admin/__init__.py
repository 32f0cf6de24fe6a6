"""One-shot operator commands that move data between deployments: ``copy_objects`` copies
a store's objects to another store, ``migrate_to`` copies the state database from SQLite to
PostgreSQL (or back). Each is a library function the CLI calls; neither runs in a server.
"""
