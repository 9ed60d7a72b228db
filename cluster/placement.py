"""Where chains run: Ray resources per chain, and how many chain workers a cluster holds.

A chain worker is one Ray actor that owns `cpus_per_chain` CPUs and
`gpus_per_chain` GPUs (a fraction lets several chains of a small model share one
GPU; 0 means CPU only). A sharded chain (`ComputeSpec.ranks` > 1: g > 1 GPUs, or
`ranks_per_chain` CPU ranks) is a DeepSpeed ZeRO-3 group of that many rank actors,
one bundle each in a STRICT_PACK placement group, so a chain never spans nodes
(cluster.sharded starts them).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from cluster.contract.errors import FailedPrecondition
from cluster.contract.spec import ComputeSpec

# Ray accounts resources in units of 1e-4; a small slack avoids 0.3 * 3 < 0.9 surprises.
_EPS = 1e-6


@dataclass(frozen=True)
class ChainResources:
    """What one chain worker asks Ray for (all its ranks together; k batched chains' resources together)."""

    num_cpus: float
    num_gpus: float
    ranks: int = 1  # processes of one chain; > 1 is a ZeRO-3 group
    chains: int = 1  # chains one worker runs batched (compute.chains_per_worker)

    @classmethod
    def from_compute(cls, compute: ComputeSpec) -> "ChainResources":
        k = compute.chains_per_worker
        return cls(num_cpus=float(compute.cpus_per_chain) * k, num_gpus=float(compute.gpus_per_chain) * k,
                   ranks=compute.ranks, chains=k)

    @property
    def sharded(self) -> bool:
        return self.ranks > 1

    def actor_options(self) -> dict[str, Any]:
        """`ActorClass.options(**...)` for a single-process chain (at most one GPU)."""
        assert not self.sharded, "sharded chains go through placement_group_bundles() and rank_options()"
        return {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}

    def placement_group_bundles(self) -> list[dict[str, float]]:
        """One bundle per rank of a ZeRO-3 chain (one GPU each, or none), to be packed on one node (STRICT_PACK)."""
        bundle = {"CPU": self.num_cpus / self.ranks}
        if self.num_gpus > 0:
            bundle["GPU"] = self.num_gpus / self.ranks  # 1: a rank per GPU (ComputeSpec.validate)
        return [dict(bundle) for _ in range(self.ranks)]

    def rank_options(self, placement_group: Any, rank: int) -> dict[str, Any]:
        """`ActorClass.options(**...)` for rank `rank` of a sharded chain, in its bundle of the group."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        bundle = self.placement_group_bundles()[rank]
        strategy = PlacementGroupSchedulingStrategy(placement_group, placement_group_bundle_index=rank)
        return {"num_cpus": bundle["CPU"], "num_gpus": bundle.get("GPU", 0.0), "scheduling_strategy": strategy}

    def chains_on(self, resources: dict[str, float]) -> int:
        """How many chains of this shape fit at once on a node with these total resources
        (a sharded chain's bundles all on the one node)."""
        fits = math.floor(resources.get("CPU", 0.0) / self.num_cpus + _EPS)
        if self.num_gpus > 0:
            fits = min(fits, math.floor(resources.get("GPU", 0.0) / self.num_gpus + _EPS))
        return max(fits, 0)


def cluster_capacity(resources: ChainResources, nodes: Iterable[dict[str, float]]) -> int:
    """Chains that can run at once on these nodes (their total resources, busy or not).

    Raises FailedPrecondition when no node can hold even one chain: the job would
    wait forever, so say which setting to change instead.
    """
    nodes = list(nodes)
    capacity = sum(resources.chains_on(n) for n in nodes)
    if capacity > 0:
        return capacity
    if resources.chains > 1:
        raise FailedPrecondition(
            f"a worker of compute.chains_per_worker={resources.chains} chains needs {resources.num_cpus:g} CPUs and "
            f"{resources.num_gpus:g} GPUs on one node, and no Ray node has them; lower compute.chains_per_worker "
            "(or cpus_per_chain / gpus_per_chain), or add larger nodes")
    total_gpus = sum(n.get("GPU", 0.0) for n in nodes)
    max_cpus = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    if resources.num_gpus > 0 and total_gpus == 0:
        raise FailedPrecondition(
            f"compute.gpus_per_chain={resources.num_gpus:g} but the Ray cluster has no GPUs; "
            "set compute.gpus_per_chain=0 to run chains on CPUs, or add GPU nodes"
        )
    if resources.num_gpus > 0:
        max_gpus = max(n.get("GPU", 0.0) for n in nodes)
        if resources.sharded and max_gpus < resources.num_gpus:
            raise FailedPrecondition(
                f"compute.gpus_per_chain={resources.num_gpus:g} runs one chain as {resources.ranks} ZeRO-3 ranks "
                f"packed on one node, but the largest Ray node has {max_gpus:g} GPUs; set compute.gpus_per_chain "
                f"to at most {max_gpus:g}, or add nodes with more GPUs")
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
