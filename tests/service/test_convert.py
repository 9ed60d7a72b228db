"""llc.v1 messages ↔ job spec and result document; progress folded from events."""
import math

from cluster.contract.sampler import SamplerConfig
from cluster.contract.spec import JobSpec
from llc.results import EstimateResult, Event
from llc.v1 import llc_pb2 as pb
from service import convert
from service import job_progress as progress
from service.store import StoredEvent


def full_spec() -> pb.EstimateSpec:
    spec = pb.EstimateSpec(batch_size=4)
    spec.model.hub_id = "EleutherAI/pythia-14m"
    spec.model.revision = "step1000"
    spec.model.dtype = pb.DTYPE_BFLOAT16
    spec.dataset.hub_id = "NeelNanda/pile-10k"
    spec.dataset.context_length = 64
    spec.dataset.packing = False
    spec.restrictions.add(name="head", weights=[pb.WeightSelector(kind=pb.SELECTOR_KIND_HEAD, layer=0, head=2)])
    spec.restrictions.add(name="code", dataset=pb.DatasetRef(files=["/data/code.jsonl"], text_column="content"))
    spec.sampler.step_size = 1e-3
    spec.sampler.chains = 3
    spec.sampler.method = pb.SAMPLER_METHOD_RMSPROP_SGLD
    spec.sampler.init_loss = pb.INIT_LOSS_MODE_PAIRED
    spec.sampler.mala = False
    spec.sampler.seed = 0  # explicitly set to the default: still "set"
    spec.compute.gpus_per_chain = 0.5
    return spec


def test_unset_fields_take_the_engine_defaults():
    spec = pb.EstimateSpec()
    spec.model.local_path = "/m"
    spec.dataset.files.append("/d.jsonl")
    job = JobSpec.from_dict(convert.spec_to_dict(spec, "est-1"))
    assert job.sampler == SamplerConfig()
    assert job.dataset.split == "train" and job.dataset.text_column == "text" and job.dataset.context_length == 128
    assert job.dataset.packing is True and job.batch_size == 8 and job.model.dtype == "float32"
    assert [r.name for r in job.restrictions] == ["full"]


def test_set_fields_reach_the_job_spec():
    job = JobSpec.from_dict(convert.spec_to_dict(full_spec(), "est-1"))
    assert job.model.hub_id == "EleutherAI/pythia-14m" and job.model.revision == "step1000" and job.model.dtype == "bfloat16"
    assert job.dataset.context_length == 64 and job.dataset.packing is False
    head = job.restrictions[0].weights[0]
    assert (head.kind, head.layer, head.head) == ("head", 0, 2)
    assert job.restrictions[1].dataset.files == ["/data/code.jsonl"] and job.restrictions[1].dataset.text_column == "content"
    s = job.sampler
    assert (s.step_size, s.chains, s.method, s.init_loss, s.mala) == (1e-3, 3, "rmsprop_sgld", "paired", False)
    assert job.compute.gpus_per_chain == 0.5 and job.batch_size == 4


def test_spec_echo_roundtrips():
    job = JobSpec.from_dict(convert.spec_to_dict(full_spec(), "est-1"))
    echoed = convert.spec_from_dict(job.to_dict())
    again = JobSpec.from_dict(convert.spec_to_dict(echoed, "est-1"))
    assert again.to_dict() == job.to_dict()


def result_document():
    chain = {"chain": 0, "seed": 11, "llc": 2.5, "status": "succeeded", "loss_trace": [1.0, 1.1], "mala_acceptance": 0.9,
             "frac_below_init": 0.1, "steps": 20, "message": "", "attempts": 1}
    diverged = dict(chain, chain=1, llc=math.nan, status="diverged", mala_acceptance=None, attempts=2)
    return {"job_id": "est-1", "warnings": ["w"], "provenance": {"model": {"local_path": "/m"}, "seeds": {"job": 0},
                                                                 "versions": {"torch": "2.13"}},
            "restrictions": [{"name": "full", "llc_mean": 2.5, "llc_std": 0.0, "llc_per_chain": [2.5, math.nan],
                              "init_loss": 1.0, "loss_traces": [[1.0, 1.1], [1.0, math.inf]],
                              "diagnostics": {"rhat": None, "ess": 3.0, "mala_acceptance": 0.9, "frac_below_init": 0.1,
                                              "diverged_chains": [1]},
                              "warnings": [], "chains": [chain, diverged],
                              "moved_tensors": [{"name": "w", "shape": [4, 4], "elements": 16}], "moved_elements": 16,
                              "config": {"step_size": 1e-3, "chains": 2, "method": "rmsprop_sgld", "mala": False}}]}


def test_result_document_to_proto_to_sdk():
    msg = convert.result_from_dict(result_document())
    r = msg.restrictions[0]
    assert r.llc_mean == 2.5 and math.isnan(r.llc_per_chain[1]) and math.isnan(r.diagnostics.rhat)
    assert r.chains[1].state == pb.CHAIN_STATE_DIVERGED and math.isnan(r.chains[1].mala_acceptance)
    assert r.moved_tensors[0].shape == [4, 4] and r.sampler.chains == 2
    assert r.sampler.method == pb.SAMPLER_METHOD_RMSPROP_SGLD and r.sampler.HasField("mala") and not r.sampler.nbeta
    assert msg.provenance["versions"]["torch"] == "2.13"
    sdk = EstimateResult.from_proto(msg)
    assert sdk["full"].chains[1].state == "DIVERGED" and sdk["full"].diagnostics.diverged_chains == [1]
    assert sdk["full"].config == {"step_size": 1e-3, "chains": 2, "method": "rmsprop_sgld", "mala": False}  # typed, round trip
    doc = sdk.to_dict()  # JSON-safe: NaN → None
    assert doc["restrictions"][0]["llc_per_chain"] == [2.5, None] and doc["restrictions"][0]["diagnostics"]["rhat"] is None
    assert '"llc_mean": 2.5' in sdk.to_json()


def test_events_to_watch_messages():
    started = convert.event_to_proto(StoredEvent(0, {"type": "started", "seq": 0, "time": 1.5e9, "chains_total": 4,
                                                     "restrictions": ["a", "b"]}))
    assert started.started.chains_total == 4 and started.time.seconds == 1_500_000_000
    prog = convert.event_to_proto(StoredEvent(1, {"type": "progress", "seq": 1, "restriction": "a", "chain": 1,
                                                  "step": 5, "total_steps": 10, "llc_running": None}))
    assert prog.progress.step == 5 and math.isnan(prog.progress.llc_running)
    chain = convert.event_to_proto(StoredEvent(2, {"type": "chain", "seq": 2, "restriction": "a", "chain": 1,
                                                   "status": "retrying", "attempt": 2, "message": "worker died"}))
    assert chain.chain.state == pb.CHAIN_STATE_RETRYING and chain.chain.attempt == 2
    sdk = Event.from_proto(chain)
    assert sdk.kind == "chain" and sdk.data["state"] == "CHAIN_STATE_RETRYING" and sdk.data["attempt"] == 2
    assert convert.event_to_proto(StoredEvent(3, {"type": "result", "seq": 3, "result": {}})) is None


def test_progress_folds_events():
    spec = {"sampler": {"chains": 2, "draws": 10, "burn_in": 10}, "restrictions": [{"name": "a"}, {"name": "b"}]}
    p = progress.initial(spec)
    assert (p["chains_total"], p["steps_total"], p["steps_per_chain"]) == (4, 80, 20)
    progress.apply(p, {"type": "progress", "restriction": "a", "chain": 0, "step": 10, "llc_running": 2.0})
    progress.apply(p, {"type": "progress", "restriction": "a", "chain": 1, "step": 5, "llc_running": 4.0})
    assert p["steps_done"] == 15 and p["restrictions"][0]["llc_running"] == 3.0
    progress.apply(p, {"type": "chain", "restriction": "b", "chain": 0, "status": "succeeded", "llc": 1.0})
    progress.apply(p, {"type": "chain", "restriction": "b", "chain": 1, "status": "retrying"})
    assert p["chains_finished"] == 1 and p["steps_done"] == 35 and p["restrictions"][1]["chains_finished"] == 1
    msg = convert.progress_to_proto(progress.finish(p))
    assert msg.fraction == 1.0 and msg.chains_finished == 4 and msg.restrictions[1].restriction == "b"


def test_progress_with_an_automatic_burn_in_never_goes_back():
    """burn_in "auto": the spec's length leaves the burn-in out; the chains report their calibrated
    length (total_steps), so the total grows to it and a finished chain counts all of its steps."""
    spec = {"sampler": {"chains": 2, "draws": 100}, "restrictions": [{"name": "a"}]}
    p = progress.initial(spec)
    assert p["steps_total"] == 200
    done = []
    for step in (50, 150, 250):
        progress.apply(p, {"type": "progress", "restriction": "a", "chain": 0, "step": step, "total_steps": 300})
        done.append(p["steps_done"])
    assert p["steps_total"] == 300 + 100  # chain 0's calibrated length, chain 1's still unknown
    progress.apply(p, {"type": "chain", "restriction": "a", "chain": 0, "status": "succeeded", "llc": 1.0})
    done.append(p["steps_done"])
    assert done == sorted(done) and done[-1] == 300 and 0 < p["fraction"] < 1
