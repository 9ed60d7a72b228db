"""The contract every layer shares: the job spec, the sampler settings, the error model and the
progress events. Pure Python by construction (the standard library and re2 only): the front end,
the driver, the engine and the SDK's server-side commands import it without torch, Ray or gRPC;
`tests/contract/test_architecture.py` checks that no module here imports them.
"""
