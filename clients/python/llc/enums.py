"""Enum tables derived from the llc.v1 descriptors, so no layer types them by hand.

    values(pb.Dtype)  -> {"auto": 1, "float32": 2, ...}   (UNSPECIFIED left out)
    names(pb.Dtype)   -> {1: "auto", 2: "float32", ...}

Names drop the buf-style prefix (DTYPE_, SELECTOR_KIND_, ...) and are lower case.
"""
from __future__ import annotations

import re
from typing import Any


def prefix(enum_name: str) -> str:
    """The buf-style prefix of an enum's values: SelectorKind -> SELECTOR_KIND_."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def values(enum: Any, *, upper: bool = False) -> dict[str, int]:
    """Short name → number for every value but the zero UNSPECIFIED one."""
    descriptor = enum.DESCRIPTOR
    start = prefix(descriptor.name)
    table = {}
    for v in descriptor.values:
        if v.number:
            short = v.name.removeprefix(start)
            table[short if upper else short.lower()] = v.number
    return table


def names(enum: Any, *, upper: bool = False) -> dict[int, str]:
    """Number → short name (the inverse of `values`)."""
    return {number: name for name, number in values(enum, upper=upper).items()}
