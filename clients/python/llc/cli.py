"""The `llc` command: estimate, preview, jobs, get, watch, cancel (+ serve, demo from the server
package when installed). `--json` everywhere.

    llc serve                                   # local Ray + SQLite on 127.0.0.1:50051
    llc estimate --model ./tiny --dataset train.jsonl --restrict head0=head:0.0 --draws 200
    llc jobs --state RUNNING ; llc get ID ; llc watch ID ; llc cancel ID
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from llc.errors import EstimateFailed, LLCError
from llc.requests import RESTRICTION_SYNTAX

DEFAULT_ADDRESS = "127.0.0.1:50051"


def _client(args: argparse.Namespace):
    from llc.client import Client

    return Client(args.address, token=args.token, tls=args.tls, root_certificates=args.root_cert)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, allow_nan=False))


def _estimate_line(e) -> str:
    llcs = ""
    if e.result is not None:
        llcs = " ".join(f"{r.name}={r.llc_mean:.4g}±{r.llc_std:.2g}" for r in e.result.restrictions)
    elif e.progress.steps_total:
        llcs = f"{100 * e.progress.fraction:.0f}%"
    err = f" {e.error_code}: {e.error_message.splitlines()[0]}" if e.error_message else ""
    return f"{e.id}  {e.state:<9}  {e.create_time[:19]:<19}  {llcs}{err}"


# ------------------------------------------------------------------ commands
SAMPLER_FLAGS = ("step_size", "nbeta", "gamma", "chains", "burn_in", "draws", "steps_between_draws", "seed", "method",
                 "init_loss", "dtype", "gpus_per_chain", "cpus_per_chain", "batch_size", "context_length",
                 "max_examples", "text_column")


def cmd_estimate(args: argparse.Namespace) -> int:
    settings = {k: getattr(args, k) for k in SAMPLER_FLAGS if getattr(args, k) is not None}
    try:
        from llc.requests import estimate_spec

        if args.checkpoint:  # an LLC trajectory (llc.trajectories)
            settings.update(checkpoints=args.checkpoint, calibrate_at_step=args.calibrate_at_step,
                            use_cache=False if args.no_cache else None)
        elif not args.model:
            raise ValueError("give --model (or --checkpoint STEP=DIR for a trajectory)")
        spec = estimate_spec(args.model, args.dataset, restrictions=args.restrict or [], **settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        est = client.submit(spec=spec, request_id=args.request_id)
        if args.no_wait:
            _print_json(est.to_dict()) if args.json else print(est.id)
            return 0
        from llc.client import raise_for_state
        from llc.progress import ProgressBar

        bar = ProgressBar(est.id, enabled=not args.quiet)
        final = est
        try:
            for event in client.watch(est.id):
                bar.update(event)
                if event.estimate is not None:
                    final = event.estimate
        finally:
            bar.close()
        try:
            result = raise_for_state(final)
        except EstimateFailed as exc:
            _print_json(final.to_dict()) if args.json else print(f"error: {exc}", file=sys.stderr)
            return 1
        if args.plots:
            os.makedirs(args.plots, exist_ok=True)
            result.plot_loss_traces(os.path.join(args.plots, f"{est.id}-loss-traces.png"))
            result.plot_llc(os.path.join(args.plots, f"{est.id}-llc.png"))
            result.plot_calibration(os.path.join(args.plots, f"{est.id}-calibration.png"))
            if result.is_trajectory:
                result.plot_trajectories(os.path.join(args.plots, f"{est.id}-trajectories.png"))
        if args.trajectory_plot and result.is_trajectory:
            result.plot_trajectories(args.trajectory_plot)
        if args.json:
            _print_json({"estimate_id": est.id, **result.to_dict()})
        else:
            print(f"estimate {est.id}")
            print(result.table())
            if result.calibration_table():
                print(result.calibration_table())
    return 0


def cmd_preview(args: argparse.Namespace) -> int:
    try:
        from llc.requests import estimate_spec

        spec = estimate_spec(args.model, args.dataset, restrictions=args.restrict or [],
                             **{k: getattr(args, k) for k in ("context_length", "text_column") if getattr(args, k)})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with _client(args) as client:
        previews = client.preview(spec=spec)
    if args.json:
        _print_json(previews)
        return 0
    for r in previews:
        print(f"{r['name']}: {r['elements']} elements in {len(r['tensors'])} tensors")
        for t in r["tensors"]:
            print(f"  {t['name']}  {list(t['shape'])}  {t['elements']}")
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    with _client(args) as client:
        estimates = client.list(state=args.state, limit=args.limit, page_size=max(1, min(50, args.limit)),
                                full=args.full)
    if args.json:
        _print_json([e.to_dict() for e in estimates])
    else:
        for e in estimates:
            print(_estimate_line(e))
    return 0


def cmd_get(args: argparse.Namespace) -> int:
    with _client(args) as client:
        e = client.get(args.estimate_id)
    if args.json:
        _print_json(e.to_dict())
    else:
        print(_estimate_line(e))
        if e.result is not None:
            print(e.result.table())
            if e.result.calibration_table():
                print(e.result.calibration_table())
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.json:
            for event in client.watch(args.estimate_id, after_seq=args.after_seq):
                print(json.dumps(event.to_dict(), allow_nan=False), flush=True)
            return 0
        from llc.progress import ProgressBar

        bar = ProgressBar(args.estimate_id)
        final = None
        try:
            for event in client.watch(args.estimate_id, after_seq=args.after_seq):
                bar.update(event)
                final = event.estimate or final
        finally:
            bar.close()
    if final is not None:
        print(_estimate_line(final))
    return 0 if final is None or final.state == "SUCCEEDED" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        e = client.cancel(args.estimate_id)
    _print_json(e.to_dict()) if args.json else print(_estimate_line(e))
    return 0


# ------------------------------------------------------------------ parser
def positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _add_server_commands(sub, common: argparse.ArgumentParser) -> None:
    """`llc serve` and `llc demo` come from the server package (llc-service) through the entry point
    group `llc.commands`, so the SDK never imports it; without it they say what to install."""
    from importlib.metadata import entry_points

    why = "the server package (llc-service, with Ray), which is not installed"
    for ep in entry_points(group="llc.commands"):
        try:
            ep.load()(sub, common)
            return
        except ImportError as exc:  # installed but broken: say so when used, not on every command
            why = f"the server package, which failed to import ({exc})"

    for name in ("serve", "demo"):  # any arguments: the answer is the same
        p = sub.add_parser(name, help="(needs the server package)", add_help=False)
        p.set_defaults(func=_needs_server, why=why)


def _needs_server(args: argparse.Namespace) -> int:
    print(f"error: `llc {args.command}` needs {args.why}. Install the repository with `pip install -e .` "
          "(scripts/setup), or run the server elsewhere and point the client at it.", file=sys.stderr)
    return 2


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--address", default=os.environ.get("LLC_ADDRESS", DEFAULT_ADDRESS),
                        help="server host:port (default $LLC_ADDRESS or %(default)s)")
    common.add_argument("--token", default=os.environ.get("LLC_TOKEN"), help="bearer token (default $LLC_TOKEN)")
    common.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    common.add_argument("--root-cert", help="PEM file of the server's CA (implies --tls)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = common_options()

    parser = argparse.ArgumentParser(prog="llc", description="Local learning coefficient estimation service")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_server_commands(sub, common)

    e = sub.add_parser("estimate", parents=[common], help="submit an estimate and follow it to the result")
    e.add_argument("--model", help="hub id (EleutherAI/pythia-14m) or a local directory; with --checkpoint, the "
                   "hub id the revisions belong to (omit it when every checkpoint is a directory)")
    e.add_argument("--dataset", required=True, help="hub id or a local jsonl/json/parquet/text/csv file")
    e.add_argument("--restrict", action="append", metavar="NAME=SEL[+SEL][@DATASET]", help=RESTRICTION_SYNTAX)
    for name, kind in (("step_size", positive_float), ("nbeta", positive_float), ("gamma", positive_float),
                       ("chains", int), ("burn_in", int), ("draws", int), ("steps_between_draws", int), ("seed", int),
                       ("method", str), ("init_loss", str), ("dtype", str), ("gpus_per_chain", positive_float),
                       ("cpus_per_chain", positive_float), ("batch_size", int), ("context_length", int),
                       ("max_examples", int), ("text_column", str)):
        e.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    e.add_argument("--request-id", help="idempotency key: resubmitting with it returns the same estimate")
    e.add_argument("--no-wait", action="store_true", help="print the estimate id and return")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.add_argument("--plots", metavar="DIR", help="save loss-trace and LLC plots (PNG, needs matplotlib) here")
    e.add_argument("--checkpoint", action="append", metavar="STEP=DIR|REVISION",
                   help="an LLC trajectory: estimate at each checkpoint (repeat), e.g. 1000=/ckpts/step1000 or "
                        "1000=step1000 (a revision of --model)")
    e.add_argument("--calibrate-at-step", type=int, help="trajectory: calibrate automatic settings at this "
                   "checkpoint (default: the last) and reuse them for all")
    e.add_argument("--no-cache", action="store_true", help="trajectory: compute every unit, even stored ones")
    e.add_argument("--trajectory-plot", metavar="PNG", help="trajectory: save λ̂(t) with boundaries here")
    e.set_defaults(func=cmd_estimate)

    v = sub.add_parser("preview", parents=[common], help="which weights each restriction moves (no sampling)")
    v.add_argument("--model", required=True)
    v.add_argument("--dataset", required=True)
    v.add_argument("--restrict", action="append", metavar="NAME=SEL[+SEL][@DATASET]", help=RESTRICTION_SYNTAX)
    v.add_argument("--context-length", dest="context_length", type=int)
    v.add_argument("--text-column", dest="text_column")
    v.set_defaults(func=cmd_preview)

    j = sub.add_parser("jobs", parents=[common], help="list estimates, newest first")
    j.add_argument("--state", action="append", choices=["QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "CANCELLED"])
    j.add_argument("--limit", type=int, default=50)
    j.add_argument("--full", action="store_true", help="whole estimates with results (λ̂ per restriction), "
                   "not summaries")
    j.set_defaults(func=cmd_jobs)

    for name, func, helptext in (("get", cmd_get, "show one estimate"), ("cancel", cmd_cancel, "cancel an estimate"),
                                 ("watch", cmd_watch, "follow an estimate's progress until it ends")):
        p = sub.add_parser(name, parents=[common], help=helptext)
        p.add_argument("estimate_id")
        if name == "watch":
            p.add_argument("--after-seq", type=int, help="resume after this event seq (-1: replay every event)")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and getattr(args, "func", None) is not _needs_server:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "root_cert", None):
        args.tls = True
    try:
        return args.func(args)
    except LLCError as exc:
        if getattr(args, "json", False):
            _print_json({"error": {"code": exc.code, "message": exc.message}})
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
