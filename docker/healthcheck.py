#!/usr/bin/env python3
"""gRPC health check of the front end (grpc.health.v1), for probes that must speak TLS.

Kubernetes' native gRPC probes connect in plaintext; with TLS on, the chart's probes run

    llc-healthcheck 127.0.0.1:50051 --tls-cert=/etc/llc/tls/tls.crt [--service=llc.v1.LLCService]

Exit 0 = SERVING, 1 = anything else (not serving, no answer, TLS error), with the reason on stderr.
The server's certificate may name the Service's DNS name rather than 127.0.0.1: the check
trusts ca.crt next to the certificate when there is one (else the certificate itself) and asks
for the certificate's first DNS name.
"""
from __future__ import annotations

import argparse
import os
import ssl
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def certificate_name(cert_path: str) -> str | None:
    """The name to verify the server against: the first DNS subjectAltName, else the CN."""
    decoded = ssl._ssl._test_decode_cert(cert_path)  # noqa: SLF001 (the stdlib's only PEM decoder)
    for kind, value in decoded.get("subjectAltName", ()):
        if kind == "DNS":
            return value
    for rdn in decoded.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def channel(address: str, tls_cert: str) -> grpc.Channel:
    if not tls_cert:
        return grpc.insecure_channel(address)
    ca = os.path.join(os.path.dirname(tls_cert), "ca.crt")
    with open(ca if os.path.isfile(ca) else tls_cert, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    name = certificate_name(tls_cert)
    options = [("grpc.ssl_target_name_override", name)] if name else []
    return grpc.secure_channel(address, creds, options=options)


def check(address: str, *, tls_cert: str = "", service: str = "", timeout: float = 3.0) -> str:
    """'' when SERVING, else why not."""
    try:
        with channel(address, tls_cert) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=service),
                                                         timeout=timeout)
    except grpc.RpcError as exc:
        return f"{exc.code().name}: {exc.details()}"
    except OSError as exc:
        return f"cannot read {tls_cert}: {exc}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    return "" if status == "SERVING" else f"status {status}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llc-healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="host:port of the gRPC server")
    parser.add_argument("--tls-cert", default="", help="the server's PEM certificate (TLS); ca.crt beside it is preferred")
    parser.add_argument("--service", default="", help="health service name ('' = the whole server)")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    problem = check(args.address, tls_cert=args.tls_cert, service=args.service, timeout=args.timeout)
    if problem:
        print(f"{args.address} {args.service or '(server)'} not serving: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
