"""Who is calling: bearer tokens name principals; an estimate belongs to the principal that created it.

A tokens file (YAML or JSON) maps each token to a principal and an optional role:

    "9f2c...long random...": {principal: alice}
    "4b1e...long random...": {principal: alice}          # a second token (rotation) for the same principal
    "c7d0...long random...": {principal: ops, role: admin} # sees and cancels every estimate

`--token` alone is one admin principal, "default" (the whole deployment is one tenant, as before
principals existed). Without any token the server is one trust domain: callers are not told apart,
see every estimate, and the self-declared `llc-client-id` header only labels the estimates they
create (the owner their per-client limit counts). With tokens the header is ignored: it can never
choose the owner or widen what a caller sees.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError

from cluster.contract.errors import InvalidArgument

CLIENT_ID_KEY = "llc-client-id"
PRINCIPAL_PATTERN = r"^[A-Za-z0-9_.@:\-]{1,128}$"
_PRINCIPAL_RE = re.compile(PRINCIPAL_PATTERN)
MIN_TOKEN_CHARS = 16
SHARED_TOKEN_PRINCIPAL = "default"


@dataclass(frozen=True)
class Principal:
    name: str
    admin: bool = False

    def sees(self, owner: str) -> bool:
        return self.admin or owner == self.name


class _Entry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    principal: str = Field(pattern=PRINCIPAL_PATTERN)
    role: Literal["user", "admin"] = "user"


class _TokensFile(RootModel[dict[str, _Entry]]):
    pass


def metadata_value(metadata, key: str) -> str:
    for item in metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else value
    return ""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def load_tokens_file(path: str) -> list[tuple[str, Principal]]:
    """(token, principal) pairs of a tokens file; InvalidArgument naming the entry (never the token) if bad."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except OSError as exc:
        raise InvalidArgument(f"tokens file {path!r} cannot be read ({exc.strerror}); give a YAML/JSON file "
                              "mapping tokens to {principal, role} (--tokens-file)") from None
    except yaml.YAMLError as exc:
        raise InvalidArgument(f"tokens file {path!r} is not YAML/JSON ({type(exc).__name__}); it must map each "
                              "token to {principal: NAME, role: user|admin}") from None
    try:
        entries = _TokensFile.model_validate(data or {}).root
    except ValidationError as exc:
        # Report entry positions, not keys: the keys are the secrets.
        tokens = list(data) if isinstance(data, dict) else []
        where = []
        for err in exc.errors():
            loc = list(err["loc"])
            if loc and loc[0] in tokens:
                loc[0] = f"entry {tokens.index(loc[0]) + 1}"
            where.append(f"{'.'.join(map(str, loc)) or 'top level'}: {err['msg']}")
        raise InvalidArgument(f"tokens file {path!r}: {'; '.join(where[:5])}; each entry is TOKEN: {{principal: "
                              f"NAME ({PRINCIPAL_PATTERN}), role: user|admin}}") from None
    pairs = []
    for i, (token, entry) in enumerate(entries.items(), 1):
        if len(str(token)) < MIN_TOKEN_CHARS or any(c.isspace() for c in str(token)):
            raise InvalidArgument(f"tokens file {path!r}: the token of entry {i} (principal {entry.principal!r}) is "
                                  f"shorter than {MIN_TOKEN_CHARS} characters or has whitespace; use a long random "
                                  "one, e.g. `openssl rand -hex 32`")
        pairs.append((str(token), Principal(entry.principal, admin=entry.role == "admin")))
    if not pairs:
        raise InvalidArgument(f"tokens file {path!r} names no tokens; add TOKEN: {{principal: NAME}} entries")
    return pairs


class Authenticator:
    """Resolves a call's metadata to its principal (None = refuse: UNAUTHENTICATED)."""

    def __init__(self, tokens: list[tuple[str, Principal]]):
        self._tokens = [(_digest(token), principal) for token, principal in tokens]

    @classmethod
    def from_settings(cls, token: str = "", tokens_file: str = "") -> "Authenticator":
        tokens = load_tokens_file(tokens_file) if tokens_file else []
        if token:
            tokens.append((token, Principal(SHARED_TOKEN_PRINCIPAL, admin=True)))
        return cls(tokens)

    @property
    def required(self) -> bool:
        return bool(self._tokens)

    def principal(self, metadata) -> Principal | None:
        if not self._tokens:
            label = metadata_value(metadata, CLIENT_ID_KEY)
            return Principal(label if _PRINCIPAL_RE.match(label or "") else "anonymous", admin=True)
        header = metadata_value(metadata, "authorization")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            return None
        # Compare digests, and every one of them, so the time taken says nothing about the tokens.
        digest, found = _digest(given), None
        for known, principal in self._tokens:
            if hmac.compare_digest(digest, known) and found is None:
                found = principal
        return found
