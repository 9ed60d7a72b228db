"""Server settings, validated on construction; every limit names the flag that raises it."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from cluster.contract.errors import InvalidArgument
from cluster.contract.spec import REMOTE_CODE_ENV
from service.identity import Authenticator


def default_allowed_roots() -> tuple[str, ...]:
    """$LLC_ALLOWED_ROOTS (os.pathsep-separated directories; set but empty = none), else the
    server's working directory."""
    value = os.environ.get("LLC_ALLOWED_ROOTS")
    return (os.getcwd(),) if value is None else tuple(r for r in value.split(os.pathsep) if r)


@dataclass
class ServerConfig:
    address: str = "127.0.0.1:50051"  # host:port; port 0 picks a free one
    store_url: str = "llc-jobs.sqlite"  # a SQLite path, sqlite:///path or postgresql://...
    store_schema: str = "llc"  # PostgreSQL schema of the tables
    ray_dashboard_url: str = ""  # Ray's job API, e.g. http://127.0.0.1:8265
    token: str = ""  # one shared bearer token: an admin principal "default"; empty = none
    tls_cert: str = ""  # PEM files; both set = TLS
    tls_key: str = ""
    max_request_bytes: int = 1 << 20
    max_chains: int = 256
    max_total_draws: int = 10_000_000  # draws x chains x restrictions of one estimate
    max_restrictions: int = 512
    max_active_per_client: int = 16  # queued or running estimates per client id
    max_page_size: int = 500
    check_local_paths: bool = True  # the front end sees the cluster's files (embedded default)
    driver_python: str = sys.executable
    driver_env: dict[str, str] = field(default_factory=dict)
    watch_poll_s: float = 2.0  # watchers re-read the store this often besides being woken
    submit_retry_s: float = 30.0
    # Submission policy (service/policy.py): what a client may make the cluster read or run.
    allow_remote_code: bool = False  # ModelRef.trust_remote_code runs a model repo's own Python (--allow-remote-code)
    # Local model/dataset paths must resolve, symlinks followed, under one of these (--allow-path);
    # () = no local paths at all. Relative paths are refused, never resolved against the cwd.
    allowed_roots: tuple[str, ...] = field(default_factory=default_allowed_roots)
    default_timeout_s: float = 86_400.0  # compute.timeout_s of an estimate that sets none (--default-timeout)
    preview_timeout_s: float = 300.0  # PreviewRestrictions answers DEADLINE_EXCEEDED after this (--preview-timeout)
    # Tenants (service/identity.py): a YAML/JSON file mapping tokens to {principal, role}; with it
    # (or token) every call needs a bearer token and principals see only their own estimates.
    tokens_file: str = ""
    # Observables (service/observables.py): artifacts go under this directory, which every Ray node must
    # see at the same path (a shared mount when deployed); "" = no artifacts, observables refused.
    results_dir: str = field(default_factory=lambda: os.environ.get("LLC_RESULTS_DIR", "llc-results"))
    max_observable_values: int = 20_000_000  # loss values one estimate may record (the driver merges them in memory)
    auth: Authenticator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.auth = Authenticator.from_settings(self.token, self.tokens_file)
        host, _, port = self.address.rpartition(":")
        if not host or not port.isdigit():
            raise InvalidArgument(f"address {self.address!r} must be host:port, e.g. 127.0.0.1:50051 (port 0 = any free)")
        if not self.ray_dashboard_url.startswith(("http://", "https://")):
            raise InvalidArgument(f"ray_dashboard_url {self.ray_dashboard_url!r} must be Ray's job API URL, "
                                  "e.g. http://127.0.0.1:8265 (--ray-dashboard or RAY_DASHBOARD_ADDRESS)")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise InvalidArgument("TLS needs both --tls-cert and --tls-key (PEM files)")
        for path in (self.tls_cert, self.tls_key):
            if path and not os.path.isfile(path):
                raise InvalidArgument(f"TLS file {path!r} does not exist")
        for name in ("max_request_bytes", "max_chains", "max_total_draws", "max_restrictions",
                     "max_active_per_client", "max_page_size", "max_observable_values"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise InvalidArgument(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        self.allowed_roots = tuple(os.path.realpath(os.path.expanduser(r)) for r in self.allowed_roots if r)
        if not 0 < self.default_timeout_s <= 30 * 86400 or not 0 < self.preview_timeout_s <= 86400:
            raise InvalidArgument(f"default_timeout_s ({self.default_timeout_s}) must be in (0, 2592000] and "
                                  f"preview_timeout_s ({self.preview_timeout_s}) in (0, 86400] seconds")
        # The driver runs remote code only when told so (cluster/models.py); say it either way, so the
        # Ray head's own environment cannot decide for this server.
        self.driver_env = {**self.driver_env, REMOTE_CODE_ENV: "1" if self.allow_remote_code else "0"}
        if self.results_dir:  # the driver and its workers write artifacts there (cluster/observables.py)
            self.results_dir = os.path.realpath(os.path.expanduser(self.results_dir))
            self.driver_env = {**self.driver_env, "LLC_RESULTS_DIR": self.results_dir}
