"""The LLC estimator: localized SGLD and the learning coefficient, in plain PyTorch.

    from cluster.engine import estimate_llc, SamplerConfig

No Ray, gRPC or service imports here: the cluster driver wraps this library.
Attributes load lazily so `cluster.engine.config` stays importable without torch.
"""
from __future__ import annotations

import importlib
from typing import Any

from cluster.engine.config import ConfigError, SamplerConfig

_LAZY = {
    "estimate_llc": "cluster.engine.estimate",
    "compute_init_loss": "cluster.engine.estimate",
    "ChainProgress": "cluster.engine.estimate",
    "LLCResult": "cluster.engine.result",
    "ChainResult": "cluster.engine.result",
    "SGLD": "cluster.engine.sgld",
    "split_rhat": "cluster.engine.diagnostics",
    "effective_sample_size": "cluster.engine.diagnostics",
}

__all__ = ["SamplerConfig", "ConfigError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cluster.engine' has no attribute {name!r}")
