"""The one error model: domain errors pickle intact, cross a Ray actor as themselves, and a
config error raised inside a chain worker reaches the client as INVALID_ARGUMENT naming its field."""
from __future__ import annotations

import pickle
import shutil

import pytest

from cluster.contract import errors
from cluster.contract.sampler import ConfigError
from cluster.contract.spec import SpecError

ERROR_TYPES = [errors.LLCError, errors.InvalidArgument, errors.NotFound, errors.FailedPrecondition,
               errors.ResourceExhausted, errors.Unavailable, errors.Unauthenticated, errors.PermissionDenied,
               errors.Cancelled, errors.DeadlineExceeded]


@pytest.mark.parametrize("cls", ERROR_TYPES)
def test_every_domain_error_pickles_with_code_message_and_field(cls):
    err = cls("what to change", field="spec.x")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls
    assert (back.code, back.message, back.field, str(back)) == (err.code, "what to change", "spec.x", "what to change")


def test_field_errors_are_one_type_for_engine_and_spec_and_keep_their_path():
    assert ConfigError is SpecError is errors.InvalidField
    err = ConfigError("step_size", "must be a finite number in (0, inf), got -1")
    back = pickle.loads(pickle.dumps(err.under("sampler")))
    assert isinstance(back, errors.InvalidArgument) and isinstance(back, ValueError)
    assert back.field == "sampler.step_size" and back.code == "INVALID_ARGUMENT"
    assert back.message == "sampler.step_size: must be a finite number in (0, inf), got -1"


def test_a_reported_status_name_becomes_its_error_type():
    err = errors.reported("NOT_FOUND", "no such column", "dataset.text_column")
    assert type(err) is errors.NotFound and err.field == "dataset.text_column"
    odd = errors.reported("DATA_LOSS", "odd")
    assert type(odd) is errors.LLCError and odd.code == "DATA_LOSS"


@pytest.mark.slow
def test_a_config_error_inside_a_ray_actor_arrives_as_itself(ray_head):
    import ray
    from ray.exceptions import RayTaskError

    class Raiser:
        def fail(self):
            raise ConfigError("model", "L(w*) is nan: the loss at the given weights is not finite")

    ray.init(address=ray_head.address, namespace="test-errors")
    try:
        actor = ray.remote(Raiser).options(num_cpus=0).remote()
        with pytest.raises(RayTaskError) as info:
            ray.get(actor.fail.remote(), timeout=60)
        cause = info.value.cause
        assert isinstance(cause, errors.InvalidField) and cause.field == "model" and "L(w*)" in cause.message
        ray.get(actor.__ray_ready__.remote(), timeout=30)  # the actor that raised is alive and well
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_non_finite_loss_at_w_star_is_invalid_argument_not_dead_workers(ray_head, tiny_lm_dirs, text_jsonl,
                                                                        tmp_path):
    """Before: the worker's ConfigError did not unpickle, the pool took it for dead workers,
    retried, and the client saw UNAVAILABLE ("workers died N times while computing L(w*)")."""
    import torch
    from transformers import AutoModelForCausalLM

    from llc import Client
    from service.config import ServerConfig
    from service.server import BackgroundServer

    broken = tmp_path / "nan-model"
    shutil.copytree(tiny_lm_dirs["gpt_neox"], broken)
    model = AutoModelForCausalLM.from_pretrained(str(broken))
    with torch.no_grad():
        model.get_output_embeddings().weight.fill_(float("nan"))
    model.save_pretrained(str(broken))

    config = ServerConfig(address="127.0.0.1:0", store_url=str(tmp_path / "jobs.sqlite"),
                          ray_dashboard_url=ray_head.dashboard_url)
    with BackgroundServer(config) as server, Client(server.address) as client:
        # init_loss full: L(w*) is computed up front, on a worker, where the non-finite loss is found
        est = client.submit(str(broken), str(text_jsonl), chains=2, draws=5, context_length=16, batch_size=4,
                            step_size=1e-3, nbeta=10.0, init_loss="full")
        final = client.wait(est.id, timeout=240)
    assert final.state == "FAILED", final
    assert final.error_code == "INVALID_ARGUMENT", (final.error_code, final.error_message)
    assert final.error_message.startswith("model: L(w*) is nan"), final.error_message
