"""Limits on structured-output schemas, checked at validation before anything runs.

The reference is OpenAI's published Structured Outputs limits (up to 5,000 object
properties in all, 10 levels of nesting, 1,000 enum values in all, 120,000
characters of property names, definition names, enum and const values, 15,000
characters for one enum of more than 250 string values). Lowered where a worker
here cannot afford them: grammar compilation (xgrammar, as vLLM runs it) grows
faster than linearly with optional properties. Measured on this 2-core machine
(shared, so noisy) with the tiny model's tokenizer and one compile thread, by
`scripts/bench_grammar.py`: 200 properties 0.05-0.1 s, 500 0.35-1 s, 1,000
6.5-13 s, 2,000 76 s; the issue saw 5,000 take a vLLM worker past 5 GB. So a
schema holds at most 256 properties. Whatever passes
these limits still compiles under a time and memory budget (grammar_budget.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson


@dataclass(frozen=True)
class SchemaLimits:
    max_properties: int = 256  # OpenAI: 5,000; lowered, see above
    max_depth: int = 10  # OpenAI: 10 levels of nesting
    max_enum_values: int = 1000  # OpenAI: 1,000 across the schema
    max_enum_chars: int = 15_000  # OpenAI: one enum's string values (when it has > 250)
    max_total_chars: int = 120_000  # OpenAI: names, definition names, enum and const values
    max_schema_bytes: int = 100_000  # the schema as JSON; OpenAI publishes none


SCHEMA_LIMITS = SchemaLimits()

# Keywords whose value is a map of names to subschemas, and those holding subschemas.
_NAMED = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")


def schema_problem(schema: Any, limits: SchemaLimits = SCHEMA_LIMITS) -> str | None:
    """The first limit `schema` breaks, as a message naming it; None when within all.
    Iterative, so a deep schema cannot exhaust the stack."""
    size = len(orjson.dumps(schema))
    if size > limits.max_schema_bytes:
        return f"the schema is {size} bytes as JSON, over the limit of {limits.max_schema_bytes} (max_schema_bytes)"
    properties = enum_values = chars = 0
    stack: list[tuple[Any, int]] = [(schema, 1)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if depth > limits.max_depth:
            return f"the schema nests deeper than {limits.max_depth} levels (max_depth)"
        for key in _NAMED:
            named = node.get(key)
            if isinstance(named, dict):
                chars += sum(len(str(name)) for name in named)
                if key == "properties":
                    properties += len(named)
                stack.extend((child, depth + 1) for child in named.values())
        for key in _ONE:
            if isinstance(node.get(key), dict):
                stack.append((node[key], depth + 1))
        for key in _MANY:
            if isinstance(node.get(key), list):
                stack.extend((child, depth + 1) for child in node[key])
        enum = node.get("enum")
        if isinstance(enum, list):
            enum_values += len(enum)
            enum_chars = sum(len(v) for v in enum if isinstance(v, str))
            chars += enum_chars
            if len(enum) > 250 and enum_chars > limits.max_enum_chars:
                return (
                    f"an enum of {len(enum)} values holds {enum_chars} characters, over the limit of "
                    f"{limits.max_enum_chars} (max_enum_chars)"
                )
        if isinstance(node.get("const"), str):
            chars += len(node["const"])
        if properties > limits.max_properties:
            return f"the schema has more than {limits.max_properties} properties in all (max_properties)"
        if enum_values > limits.max_enum_values:
            return f"the schema has more than {limits.max_enum_values} enum values in all (max_enum_values)"
        if chars > limits.max_total_chars:
            return (
                f"the schema's names, enum and const values exceed {limits.max_total_chars} characters "
                "(max_total_chars)"
            )
    return None
