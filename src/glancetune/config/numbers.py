"""Booleans where numbers are meant: pydantic reads `true` as 1 for an int key (`lora_rank: true` would train at
rank 1), so the config refuses a boolean for any key whose type admits a number but not a boolean, and inside a
list of numbers."""
from __future__ import annotations

import types
import typing
from typing import Any

NUMBERS = (int, float)


def members(annotation) -> list:
    """The types a (possibly union) annotation admits, flattened."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in members(a)]
    return [annotation]


def takes_number(annotation) -> bool:
    """A key whose type admits a number (or a list of numbers) and no boolean."""
    kinds = members(annotation)
    if bool in kinds:
        return False
    return any(k in NUMBERS for k in kinds) or any(
        e in NUMBERS for k in kinds if typing.get_origin(k) in (list, tuple) for e in typing.get_args(k))


def bool_for_number(annotation, value: Any) -> bool:
    """`value` is a boolean (or a list holding one) given for a key of type `annotation` that means a number."""
    if not takes_number(annotation):
        return False
    if isinstance(value, bool):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value)
