"""The LLC estimator: localized SGLD and the learning coefficient, in plain PyTorch.

    from cluster.contract.sampler import SamplerConfig
    from cluster.engine.estimate import estimate_llc

No Ray, gRPC or service imports here: the cluster driver wraps this library. The package
imports nothing itself: `result`, `diagnostics` and `calibrate` are numpy-only (the driver
uses them without torch); `estimate`, `sgld`, `batched`, `fused`, `lean`, `zero3`,
`influence` and `observables` need torch.
"""
