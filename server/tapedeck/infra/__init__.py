"""Infrastructure: the parts the domain runs on, none of which knows a business rule.

The state databases (``db`` for SQLite, ``db_postgres``, ``sql`` for the shared dialect,
``migrations``/``pg_migrations``), the managed SeaweedFS (``weed``, ``weed_cluster``,
``weed_security``), transport security (``pki``, ``tls``), secrets on disk (``keyfile``,
``private``), process supervision (``supervise``, ``wakeup``) and what operators watch
(``logs``, ``metrics``, ``health``). Modules here import nothing from ``tapedeck.domain``,
the roles or the background packages; ``tests/test_architecture.py`` checks it.
"""
