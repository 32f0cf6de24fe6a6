"""Infrastructure: the parts the domain runs on, none of which knows a business rule.

The state databases (``db`` for SQLite, ``db_postgres``, ``sql`` for the shared dialect,
``migrations``/``pg_migrations``), the durable job queue (``jobs``), the object store
(``store/``), the managed SeaweedFS (``weed``, ``weed_cluster``, ``weed_security``),
transport security (``pki``, ``tls``), secrets on disk (``keyfile``, ``private``), process
supervision (``supervise``, ``wakeup``), what operators watch (``logs``, ``metrics``,
``health``) and the test-only crash points (``failpoints``). Modules here import only each
other and the leaves (``errors``, ``clock``, ``ids``, ``settings``);
``tests/test_architecture.py`` checks it.
"""
