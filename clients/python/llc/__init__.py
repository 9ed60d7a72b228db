"""Python SDK for the LLC estimation service (llc.v1).

    from llc import Client
    with Client("127.0.0.1:50051", token=None) as client:
        result = client.estimate(model="EleutherAI/pythia-14m", dataset="NeelNanda/pile-10k",
                                 restrictions=["head0=head:0.0"], draws=200)
        print(result.table())

Needs only grpcio and protobuf; tqdm, pandas and matplotlib are optional extras.
"""
from llc.client import Client
from llc.errors import EstimateCancelled, EstimateFailed, LLCError
from llc.observables import ObservablesArtifact, observables_spec
from llc.results import Estimate, EstimateResult, Event, RestrictionResult

__all__ = ["Client", "Estimate", "EstimateResult", "RestrictionResult", "Event", "LLCError", "EstimateFailed",
           "EstimateCancelled", "ObservablesArtifact", "observables_spec"]
__version__ = "0.1.0"
