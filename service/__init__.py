"""The llc.v1 front end: validates requests, persists jobs, runs each estimate as a Ray job,
streams its progress and stores its result. Never imports torch (tests check it).

    server.py        LLCServer / BackgroundServer: gRPC server, health, TLS
    reflection.py    server reflection as grpc.reflection.v1 and v1alpha
    servicer.py      the LLCService RPCs (raise domain errors)
    interceptors.py  bearer-token auth; domain errors → status codes (with errors.py)
    convert.py       llc.v1 messages ↔ job spec and result document
    runner.py        submits to Ray's job API, follows logs, drives the job state machine
    states.py        QUEUED → RUNNING → SUCCEEDED | FAILED | CANCELLED
    store/           jobs and events in SQLite (default) or PostgreSQL
    cli.py           `llc-server serve|demo` (also `llc serve|demo`, through an entry point)
    serve.py         the embedded default or a joined cluster; demo.py: the demo
"""
