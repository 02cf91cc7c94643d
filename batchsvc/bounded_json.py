"""Parsing JSON a client sent, bounded in nesting depth.

orjson never recurses past its own limit (1024 levels) and says so with a
`JSONDecodeError` instead of a `RecursionError`; on top of that, client
documents (API bodies, form fields) may nest only `max_depth` levels, so that
nothing which walks them later (marshmallow, the validators, vLLM) recurses deep.
"""

from __future__ import annotations

from typing import Any

import orjson

# API bodies and their fields: the deepest legitimate one (metadata in a body) is 3.
MAX_BODY_DEPTH = 32


class JSONRefused(ValueError):
    """Not JSON, or nested deeper than allowed; the message says which."""


def depth(value: Any, limit: int) -> int:
    """How deeply `value` nests (a scalar is 0), counting no further than `limit + 1`.
    Iterative, so a hostile document cannot exhaust the stack."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        level += 1
        deepest = max(deepest, level)
        if deepest > limit:
            return deepest
        stack.extend((child, level) for child in children)
    return deepest


def loads(data: bytes | str, *, max_depth: int = MAX_BODY_DEPTH) -> Any:
    """Parse `data` as JSON nesting at most `max_depth` arrays/objects deep."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg:
            raise JSONRefused(f"nested deeper than {max_depth} levels") from None
        raise JSONRefused(f"{exc.msg} (at character {exc.pos})") from None
    if depth(value, max_depth) > max_depth:
        raise JSONRefused(f"nested deeper than {max_depth} levels")
    return value
