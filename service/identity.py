"""Who is calling: the client id estimates count against, and the bearer token check."""
from __future__ import annotations

import hashlib
import hmac
import re

import grpc

CLIENT_ID_KEY = "llc-client-id"
_CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9_.@:\-]{1,128}$")


def metadata_value(metadata, key: str) -> str:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else value
    return ""


def client_id(context: grpc.aio.ServicerContext) -> str:
    """The `llc-client-id` metadata if valid, else 'anonymous' (limits count per client id)."""
    value = metadata_value(context.invocation_metadata(), CLIENT_ID_KEY)
    return value if _CLIENT_ID_RE.match(value or "") else "anonymous"


def token_matches(metadata, token: str) -> bool:
    header = metadata_value(metadata, "authorization")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    # Compare digests so the time taken says nothing about the token.
    return hmac.compare_digest(hashlib.sha256(given.encode()).digest(), hashlib.sha256(token.encode()).digest())
