"""The composition root: settings in, a wired process out, for every process kind.

This package is the only place that picks implementations from configuration and
the only place that registers what runs inside and after a write
(``services/hooks.py``). One module per process kind:

- ``server.py``: ``flowyard serve`` in default mode (SQLite, in-process worker) and
  in server mode (PostgreSQL or MariaDB, workers elsewhere), with the server-side
  NATS bridge (``services/nats_server.py``) when ``--nats`` is set;
- ``db_worker.py``: ``flowyard worker --db`` (SKIP LOCKED on the server's database);
- ``nats_worker.py``: ``flowyard worker --nats`` (JetStream and the object store
  only: it imports nothing of SQL);
- ``webhooks.py``: ``flowyard webhooks dispatch`` and the webhook intake.

Everything else receives its collaborators ready-made. The modules are imported
one by one (a NATS worker must not load the SQL stack), so this file imports none.
"""
