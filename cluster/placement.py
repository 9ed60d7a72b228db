"""Where chains run: Ray resources per chain, and how many chain workers a cluster holds.

A chain worker is one Ray actor that owns `cpus_per_chain` CPUs and
`gpus_per_chain` GPUs (a fraction lets several chains of a small model share one
GPU; 0 means CPU only). Chains of more than one GPU need a DeepSpeed ZeRO-3 group
packed on one node (a STRICT_PACK placement group); that path is planned here but
refused until a ZeRO-3 chain runner exists.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from cluster.errors import FailedPrecondition
from cluster.spec import ComputeSpec

# Ray accounts resources in units of 1e-4; a small slack avoids 0.3 * 3 < 0.9 surprises.
_EPS = 1e-6


@dataclass(frozen=True)
class ChainResources:
    """What one chain worker asks Ray for."""

    num_cpus: float
    num_gpus: float

    @classmethod
    def from_compute(cls, compute: ComputeSpec) -> "ChainResources":
        return cls(num_cpus=float(compute.cpus_per_chain), num_gpus=float(compute.gpus_per_chain))

    @property
    def multi_gpu(self) -> bool:
        return self.num_gpus > 1

    def actor_options(self) -> dict[str, Any]:
        """`ActorClass.options(**...)` for a single-process chain (at most one GPU)."""
        assert not self.multi_gpu, "multi-GPU chains go through placement_group_bundles()"
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def placement_group_bundles(self) -> list[dict[str, float]]:
        """One bundle per GPU rank of a ZeRO-3 chain, to be packed on one node (STRICT_PACK)."""
        ranks = int(self.num_gpus)
        return [{"GPU": 1.0, "CPU": self.num_cpus / ranks} for _ in range(ranks)]

    def chains_on(self, resources: dict[str, float]) -> int:
        """How many chains of this shape fit at once on a node with these total resources."""
        fits = math.floor(resources.get("CPU", 0.0) / self.num_cpus + _EPS)
        if self.num_gpus > 0:
            fits = min(fits, math.floor(resources.get("GPU", 0.0) / self.num_gpus + _EPS))
        return max(fits, 0)


def require_single_process(resources: ChainResources) -> None:
    """Refuse multi-GPU chains until the ZeRO-3 chain runner exists (a later issue)."""
    if resources.multi_gpu:
        bundles = resources.placement_group_bundles()
        raise FailedPrecondition(
            f"compute.gpus_per_chain={resources.num_gpus:g} needs a DeepSpeed ZeRO-3 chain over a "
            f"STRICT_PACK placement group of {len(bundles)} GPU bundles, which this version does not run yet; "
            "set compute.gpus_per_chain to 1 or less (a fraction shares one GPU between chains)"
        )


def cluster_capacity(resources: ChainResources, nodes: Iterable[dict[str, float]]) -> int:
    """Chains that can run at once on these nodes (their total resources, busy or not).

    Raises FailedPrecondition when no node can hold even one chain: the job would
    wait forever, so say which setting to change instead.
    """
    nodes = list(nodes)
    capacity = sum(resources.chains_on(n) for n in nodes)
    if capacity > 0:
        return capacity
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    max_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if resources.num_gpus > 0 and total_gpus == 0:
        raise FailedPrecondition(
            f"compute.gpus_per_chain={resources.num_gpus:g} but the Ray cluster has no GPUs; "
            "set compute.gpus_per_chain=0 to run chains on CPUs, or add GPU nodes"
        )
    if resources.num_gpus > 0:
        max_gpus = max(n.get("GPU", 0.0) for n in nodes)
        raise FailedPrecondition(
            f"no Ray node has {resources.num_cpus:g} CPUs and {resources.num_gpus:g} GPUs for one chain "
            f"(largest node: {max_cpus:g} CPUs, {max_gpus:g} GPUs); lower compute.cpus_per_chain or "
            "compute.gpus_per_chain"
        )
    raise FailedPrecondition(
        f"compute.cpus_per_chain={resources.num_cpus:g} but the largest Ray node has {max_cpus:g} CPUs; "
        f"set compute.cpus_per_chain to at most {max_cpus:g}, or add larger nodes"
    )


def pool_size(resources: ChainResources, nodes: Iterable[dict[str, float]], units: int,
              max_workers: int = 0) -> int:
    """Chain workers to start: one per chain slot in the cluster, no more than there are units.

    `max_workers` (0 = no cap) bounds it, e.g. to keep a job from taking a whole shared cluster.
    """
    size = min(cluster_capacity(resources, nodes), units)
    if max_workers > 0:
        size = min(size, max_workers)
    return max(size, 1)
