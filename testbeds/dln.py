"""Deep linear networks at a chosen true rank: the theory benchmark's models.

f(x) = W_L ⋯ W_1 x. The true parameter w* keeps an r×r block in the corner of
every W_i and zeros elsewhere, so the product has rank r and every hidden unit
beyond the r-th is dead in both directions: the most singular points of the set
of true parameters, where the local learning coefficient equals Aoyagi's λ.
Data: x ~ U[-10, 10]^H_0, y = f_{w*}(x) (noiseless), loss ½·mean ||f(x) - y||².
"""
from __future__ import annotations

from typing import Sequence

import torch


def make_dln(widths: Sequence[int], rank: int, *, seed: int = 0) -> torch.nn.Sequential:
    g = torch.Generator().manual_seed(seed)
    layers = []
    for h_in, h_out in zip(widths[:-1], widths[1:]):
        layer = torch.nn.Linear(h_in, h_out, bias=False)
        with torch.no_grad():
            layer.weight.zero_()
            if rank:
                # orthogonal-ish block keeps the product's scale O(1) at any depth
                q, _ = torch.linalg.qr(torch.randn(rank, rank, generator=g))
                layer.weight[:rank, :rank] = q
        layers.append(layer)
    return torch.nn.Sequential(*layers)


def make_dln_data(model: torch.nn.Module, n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1)
    h0 = model[0].in_features
    x = torch.rand(n, h0, generator=g) * 20 - 10
    with torch.no_grad():
        y = model(x)
    return x, y


class ShuffledBatches:
    """Minibatches of (x, y), reshuffled by torch's default generator at every pass:
    the engine seeds it per chain, so each chain sees its own order; the last partial
    batch is dropped."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch: int):
        self.x, self.y, self.batch = x, y, batch

    def __len__(self) -> int:
        return len(self.x) // self.batch

    def every_row(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every example once (the last batch may be partial): the engine's L(w*) table pass."""
        return [(self.x[i:i + self.batch], self.y[i:i + self.batch]) for i in range(0, len(self.x), self.batch)]

    def __iter__(self):
        order = torch.randperm(len(self.x))
        for i in range(len(self)):
            idx = order[i * self.batch:(i + 1) * self.batch]
            yield self.x[idx], self.y[idx]


def dln_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    return dln_row_loss(model, batch).mean()


def dln_row_loss(model: torch.nn.Module, batch) -> torch.Tensor:
    """Each example's ½||f(x) - y||²: the engine looks L(w*) up per example (cluster.engine.anchor)."""
    x, y = batch
    return 0.5 * ((model(x) - y) ** 2).sum(dim=1)


dln_loss.per_row = dln_row_loss


def parameter_count(widths: Sequence[int]) -> int:
    return sum(a * b for a, b in zip(widths[:-1], widths[1:]))
