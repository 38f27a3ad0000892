"""The NATS JetStream transport: streams, the outbox relay, the server's consumers, workers.

    streams.py          names, subjects and configs; ensure_* compares and repairs
    broker.py           the FastStream NatsBroker (auth, reconnects) every process uses
    relay.py            outbox -> FLOWYARD_EVENTS (+ work messages for new tasks)
    server_consumer.py  worker events -> projection; heartbeats; MaxDeliver advisories
    reconcile.py        the database is the record: re-dispatch what JetStream lost
    work_queue.py       NatsWorkQueue, the worker's WorkQueue over a work stream
    asyncapi.py         the AsyncAPI description of all of the above

See docs/nats.md for the subjects, streams and guarantees.
"""
