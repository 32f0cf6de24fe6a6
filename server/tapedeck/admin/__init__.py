"""One-shot operator commands that move data between deployments: ``copy_objects`` copies
every object of the store into another S3 store, ``migrate_to`` copies an embedded SQLite
installation's rows into PostgreSQL. Each is a library function the CLI calls; neither
runs in a server.
"""
