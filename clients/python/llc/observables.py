"""Observables in the SDK: the request part, and the artifact read back as pandas / xarray.

    obs = llc.observables_spec({"code": "code.jsonl", "legal": "legal.jsonl"}, granularity="token", every=2)
    est = client.estimate(model, "train.jsonl", restrictions=["full", "l0=layer:0"], observables=obs)
    art = client.observables(est.id)         # fetched with the FetchArtifact RPC, in chunks
    art.losses                                # DataFrame: restriction, observable, chain, draw, example, token, loss
    art.to_xarray("full", "code")             # DataArray (chain, draw, example[, token])
    art.bif, art.susceptibilities             # DataFrames computed on the cluster

Reading Parquet needs pandas and pyarrow (`pip install llc-client[observables]`).
"""
from __future__ import annotations

import io
from typing import Any, Mapping

from llc import enums
from llc.v1 import llc_pb2 as pb

_GRANULARITY = enums.values(pb.Granularity)


def observables_spec(datasets: Mapping[str, Any], *, granularity: str = "sequence", every: int | None = None,
                     max_examples: int | None = None, include_sampling: bool | None = None) -> pb.Observables:
    """pb.Observables: `datasets` maps a name to a dataset (a path, a hub id or a dict, as llc.requests.dataset_ref).

    granularity: "sequence" (one loss per example) or "token"; every: record every k-th draw;
    max_examples: examples per dataset (server default 32); include_sampling: also the sampling
    dataset's examples, as "sampling" (default true; susceptibilities need it)."""
    from llc.requests import dataset_ref

    if granularity not in _GRANULARITY:
        raise ValueError(f"granularity must be one of {sorted(_GRANULARITY)}, got {granularity!r}")
    msg = pb.Observables(granularity=_GRANULARITY[granularity])
    for name, ds in datasets.items():
        msg.datasets.add(name=name).dataset.CopyFrom(dataset_ref(ds))
    for name, value in (("every", every), ("max_examples", max_examples), ("include_sampling", include_sampling)):
        if value is not None:
            setattr(msg, name, value)
    return msg


def inherit_tokenization(spec: pb.EstimateSpec) -> None:
    """Observable datasets are tokenized like the sampling dataset unless they say otherwise."""
    for d in spec.observables.datasets:
        for name in ("context_length", "text_column", "packing"):
            if spec.dataset.HasField(name) and not d.dataset.HasField(name):
                setattr(d.dataset, name, getattr(spec.dataset, name))


def _parquet(data: bytes):
    try:
        import pandas as pd
    except ImportError:  # pragma: no cover - depends on the installation
        raise ImportError("reading observables needs pandas and pyarrow: pip install 'llc-client[observables]'") from None
    return pd.read_parquet(io.BytesIO(data))


class ObservablesArtifact:
    """The files of one estimate's artifact, parsed lazily."""

    def __init__(self, files: Mapping[str, bytes]):
        self.files = dict(files)
        self._frames: dict[str, Any] = {}

    def _frame(self, name: str):
        if name not in self.files:
            raise KeyError(f"the artifact has no {name}; it has {sorted(self.files)}")
        if name not in self._frames:
            frame = _parquet(self.files[name])
            for col in ("restriction", "observable", "observable_1", "observable_2"):
                if col in frame:
                    frame[col] = frame[col].astype(str)
            self._frames[name] = frame
        return self._frames[name]

    @property
    def losses(self):
        """DataFrame: restriction, observable, chain, draw, example, token (-1 per sequence), loss."""
        return self._frame("losses.parquet")

    @property
    def bif(self):
        """DataFrame: restriction, observable_1, example_1, observable_2, example_2, bif (per-sequence correlation)."""
        return self._frame("bif.parquet")

    @property
    def susceptibilities(self):
        """DataFrame: restriction, observable, example, token, susceptibility (arXiv 2504.18274's covariance)."""
        return self._frame("susceptibilities.parquet")

    def to_xarray(self, restriction: str, observable: str):
        """xarray.DataArray of one restriction's losses on one observable: (chain, draw, example[, token])."""
        frame = self.losses
        sub = frame[(frame["restriction"] == restriction) & (frame["observable"] == observable)]
        if sub.empty:
            raise KeyError(f"no losses of restriction {restriction!r} on observable {observable!r}")
        index = ["chain", "draw", "example"] + (["token"] if (sub["token"] >= 0).any() else [])
        return sub.set_index(index)["loss"].to_xarray().rename(f"loss_{observable}")

    def to_numpy(self, restriction: str, observable: str):
        """(chains, draws, examples[, tokens]): the layout cluster.engine.influence takes."""
        return self.to_xarray(restriction, observable).values
