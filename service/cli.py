"""The server's commands: `llc-server serve|demo`, also offered as `llc serve|demo` through the
entry point group `llc.commands` (the SDK finds them there and never imports this package).

    llc-server serve                            # local Ray + SQLite on 127.0.0.1:50051
    llc-server demo                             # the whole path offline, with a tiny model
"""
from __future__ import annotations

import argparse
import os
import sys

from llc.cli import DEFAULT_ADDRESS, common_options, positive_float


def cmd_serve(args: argparse.Namespace) -> int:
    from service import serve  # Ray's job client and the store: only when serving
    settings = {k: v for k, v in dict(address=args.listen, store_url=args.store, store_schema=args.store_schema,
                                      token=args.token or "", tokens_file=args.tokens_file,
                                      tls_cert=args.tls_cert, tls_key=args.tls_key, max_chains=args.max_chains,
                                      max_total_draws=args.max_total_draws, max_request_bytes=args.max_request_bytes,
                                      max_active_per_client=args.max_active_per_client,
                                      driver_python=args.driver_python,
                                      check_local_paths=not args.no_check_local_paths,
                                      allow_remote_code=args.allow_remote_code,
                                      allowed_roots=None if args.allow_path is None else tuple(args.allow_path),
                                      default_timeout_s=args.default_timeout,
                                      preview_timeout_s=args.preview_timeout, results_dir=args.results_dir,
                                      max_observable_values=args.max_observable_values).items() if v not in (None, "")}
    if args.results_dir == "":  # `--results-dir=`: no artifacts; observables are refused (FAILED_PRECONDITION)
        settings["results_dir"] = ""
    try:
        serve.run(ray_dashboard=args.ray_dashboard or "", num_cpus=args.num_cpus, stop=args.stop, **settings)
    except Exception as exc:  # the server's domain errors (cluster.contract.errors) carry a code and a message
        if not (hasattr(exc, "code") and hasattr(exc, "message")):
            raise
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from service import demo
    return demo.main(chains=args.chains, draws=args.draws, workdir=args.workdir or "", num_cpus=args.num_cpus,
                     json_out=args.json_out or "")



def add_commands(sub, common: argparse.ArgumentParser) -> None:
    """Adds `serve` and `demo` to an argparse subparsers object (the `llc` CLI's or our own)."""
    s = sub.add_parser("serve", parents=[common], help="run the server (local Ray + SQLite by default)")
    s.add_argument("--listen", default=os.environ.get("LLC_LISTEN", DEFAULT_ADDRESS), help="host:port to serve on")
    s.add_argument("--store", default=os.environ.get("LLC_STORE", "llc-jobs.sqlite"),
                   help="SQLite file or postgresql://user@host:5432/db (default %(default)s)")
    s.add_argument("--store-schema", default=os.environ.get("LLC_STORE_SCHEMA"),
                   help="PostgreSQL schema of the job tables (default llc)")
    s.add_argument("--ray-dashboard", help="join this Ray cluster's job API (http://host:8265); default: "
                   "$RAY_DASHBOARD_ADDRESS, $RAY_ADDRESS, else start a local Ray cluster")
    s.add_argument("--num-cpus", type=int, help="CPUs of the local Ray cluster (default: all)")
    s.add_argument("--stop", action="store_true",
                   help="stop the local Ray cluster that an earlier server on this --store left running for "
                        "unfinished estimates (they are cancelled), then exit")
    s.add_argument("--driver-python", default=os.environ.get("LLC_DRIVER_PYTHON"),
                   help="interpreter that runs `-m cluster.driver` on the Ray head (default: this one)")
    s.add_argument("--no-check-local-paths", action="store_true",
                   default=os.environ.get("LLC_CHECK_LOCAL_PATHS", "1") == "0",
                   help="do not check that local model/data paths exist here (the cluster has other files)")
    s.add_argument("--tokens-file", default=os.environ.get("LLC_TOKENS_FILE"),
                   help="YAML/JSON file mapping bearer tokens to {principal, role: user|admin}: principals see "
                        "only their own estimates, admins every one (default $LLC_TOKENS_FILE)")
    s.add_argument("--tls-cert")
    s.add_argument("--tls-key")
    s.add_argument("--max-chains", type=int)
    s.add_argument("--max-total-draws", type=int)
    s.add_argument("--max-request-bytes", type=int)
    s.add_argument("--max-active-per-client", type=int)
    s.add_argument("--results-dir", default=os.environ.get("LLC_RESULTS_DIR"),
                   help="directory of observables artifacts, seen by every Ray node at this path "
                        "(default $LLC_RESULTS_DIR, else ./llc-results)")
    s.add_argument("--max-observable-values", type=int, help="loss values one estimate may record (default 2e7)")
    roots = os.environ.get("LLC_ALLOWED_ROOTS")  # ':'-separated; set but empty = no local paths at all
    s.add_argument("--allow-path", action="append", metavar="DIR",
                   default=None if roots is None else [r for r in roots.split(os.pathsep) if r],
                   help="a directory clients may name local models and data under (repeatable, added to "
                        "$LLC_ALLOWED_ROOTS; symlinks are resolved first); default: the working directory")
    s.add_argument("--allow-remote-code", action="store_true",
                   help="accept model.trust_remote_code: the model repository's own Python then runs on the "
                        "cluster as the server's user (off: PERMISSION_DENIED)")
    s.add_argument("--default-timeout", type=positive_float, metavar="SECONDS",
                   help="job timeout of estimates that set no compute.timeout_s (default 86400)")
    s.add_argument("--preview-timeout", type=positive_float, metavar="SECONDS",
                   help="PreviewRestrictions answers DEADLINE_EXCEEDED after this (default 300)")
    s.set_defaults(func=cmd_serve)

    d = sub.add_parser("demo", parents=[common], help="the whole path offline: local Ray, server, tiny model, estimate")
    d.add_argument("--chains", type=int, default=2)
    d.add_argument("--draws", type=int, default=3000, help="per chain; the ε pilots get a third of the chains' steps")
    d.add_argument("--num-cpus", type=int, default=2)
    d.add_argument("--workdir", help="keep the model, data and job store here (default: a temporary directory)")
    d.add_argument("--json-out", help="also write the result document here")
    d.set_defaults(func=cmd_demo)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llc-server", description="The llc.v1 server and its demo")
    add_commands(parser.add_subparsers(dest="command", required=True), common_options())
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
