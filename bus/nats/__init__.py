"""The NATS JetStream transport: streams, the outbox relay, the server's consumers, workers.

    subjects.py         the subject grammar: subject_for, token, name_token, every subject
    streams.py          stream and consumer names, headers, configs; ensure_* repairs
    broker.py           the FastStream NatsBroker (auth, reconnects); nats_errors, best_effort
    worker_protocol.py  heartbeat and presence messages, NATS worker ids, NATS_LEASES
    relay.py            outbox -> FLOWYARD_EVENTS (+ work messages for new tasks)
    dispatch.py         a task's work message and its wake-up
    scheduler.py        work by priority as workers have room, and when due
    worker_events.py    worker events -> projection (one transaction per batch)
    server_handlers.py  request-reply: heartbeats, worker presence, whoami
    advisories.py       MaxDeliver advisories: end the tasks JetStream gave up on
    reconcile.py        the database is the record: re-dispatch what JetStream lost
    topology.py         the server's streams and consumers, re-created when lost
    pull.py             exact pull requests on one durable consumer
    work_bindings.py    the work consumers a worker pulls from, and finding them
    work_queue.py       NatsWorkQueue, the worker's WorkQueue over a work stream
    object_store.py     task files over a JetStream object store (streamed)
    auth_config.py      nats-server accounts and permissions from the users table
    asyncapi.py         the AsyncAPI description of all of the above

See docs/nats.md for the subjects, streams and guarantees.
"""
