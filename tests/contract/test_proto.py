"""The llc.v1 contract: generated stubs match the proto, buf style holds."""
import filecmp
import subprocess
import sys
from pathlib import Path

from llc.v1 import llc_pb2

ROOT = Path(__file__).resolve().parents[2]
GENERATED = ("llc_pb2.py", "llc_pb2.pyi", "llc_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path):
    subprocess.run([str(ROOT / "scripts" / "gen_proto"), str(tmp_path)], check=True, cwd=ROOT,
                   env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"})
    for name in GENERATED:
        fresh, committed = tmp_path / "llc" / "v1" / name, ROOT / "clients" / "python" / "llc" / "v1" / name
        assert filecmp.cmp(fresh, committed, shallow=False), (
            f"{committed} is stale: run scripts/gen_proto and commit the result")


def test_buf_style_enums_and_package():
    fd = llc_pb2.DESCRIPTOR
    assert fd.package == "llc.v1" and fd.name == "llc/v1/llc.proto"
    assert fd.enum_types_by_name, "expected enums"
    for enum in fd.enum_types_by_name.values():
        prefix = "".join("_" + c if c.isupper() and i else c for i, c in enumerate(enum.name)).upper() + "_"
        assert enum.values_by_number[0].name == prefix + "UNSPECIFIED", enum.name
        assert all(v.name.startswith(prefix) for v in enum.values), enum.name


def test_sampler_settings_cover_every_sampler_config_field():
    from dataclasses import fields

    from cluster.contract.sampler import SamplerConfig

    proto_fields = set(llc_pb2.SamplerSettings.DESCRIPTOR.fields_by_name)
    assert {f.name for f in fields(SamplerConfig)} == proto_fields


def test_service_methods():
    methods = set(llc_pb2.DESCRIPTOR.services_by_name["LLCService"].methods_by_name)
    assert methods == {"CreateEstimate", "GetEstimate", "ListEstimates", "CancelEstimate", "WatchEstimate",
                       "PreviewRestrictions", "FetchArtifact"}


def test_domain_enum_tuples_match_the_proto_enums():
    """The engine and job spec are proto-free, so they spell their choices out; the proto decides."""
    from cluster.contract import sampler as config
    from cluster.contract.spec import SELECTOR_KINDS
    from llc.enums import values

    assert set(values(llc_pb2.SelectorKind)) == set(SELECTOR_KINDS)
    assert set(values(llc_pb2.SamplerMethod)) == set(config.METHODS)
    assert set(values(llc_pb2.InitLossMode)) == set(config.INIT_LOSS_MODES)
    assert set(values(llc_pb2.Dtype)) == {"auto", *config.DTYPES}
