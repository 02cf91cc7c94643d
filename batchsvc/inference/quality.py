"""Answer quality of a shard or a job: how many structured answers parse against
their request's JSON schema, and how one configured answer field is distributed.

A shard counts its own lines (it holds the requests and their schemas); finalize
adds the shards up into the job's stats, and the same numbers feed the metrics.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import validators

from batchsvc.inference.outputs import CHAT_URL, is_success

# Values of the answer field beyond this many distinct ones are counted as OTHER,
# so a free-text field cannot grow the stats (or the metrics' label sets) without bound.
MAX_VALUES = 20
OTHER = "_other"
MAX_VALUE_CHARS = 64


@dataclass
class Quality:
    schema_checked: int = 0  # success lines whose request asked for a JSON schema
    schema_valid: int = 0  # ... whose every choice parses and validates against it
    answers: dict[str, int] = field(default_factory=dict)  # value of the answer field -> choices

    def add(self, body: dict[str, Any], url: str, line: dict[str, Any], answer_field: str) -> None:
        if not is_success(line):
            return
        texts = _texts(line["response"]["body"], url)
        schema = _schema_of(body)
        if schema is not None:
            self.schema_checked += 1
            if all(_valid(text, orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)) for text in texts):
                self.schema_valid += 1
        if answer_field:
            for text in texts:
                value = _field_value(text, answer_field)
                if value is not None:
                    self._count(value, 1)

    def _count(self, value: str, n: int) -> None:
        if value not in self.answers and len(self.answers) >= MAX_VALUES:
            value = OTHER
        self.answers[value] = self.answers.get(value, 0) + n

    def merge(self, other: Quality) -> None:
        self.schema_checked += other.schema_checked
        self.schema_valid += other.schema_valid
        for value, n in other.answers.items():
            self._count(value, n)

    def to_dict(self, answer_field: str) -> dict[str, Any]:
        return {
            "schema_checked": self.schema_checked,
            "schema_valid": self.schema_valid,
            "schema_invalid": self.schema_checked - self.schema_valid,
            "answer_field": answer_field or None,
            "answers": dict(sorted(self.answers.items(), key=lambda kv: (-kv[1], kv[0]))),
        }


def _texts(body: dict[str, Any], url: str) -> list[str]:
    choices = body.get("choices") or []
    if url == CHAT_URL:
        return [str((c.get("message") or {}).get("content") or "") for c in choices]
    return [str(c.get("text") or "") for c in choices]


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    response_format = body.get("response_format") or {}
    if response_format.get("type") != "json_schema":
        return None
    schema = (response_format.get("json_schema") or {}).get("schema")
    return schema if isinstance(schema, dict) else None


@functools.lru_cache(maxsize=64)
def _validator(schema_json: bytes) -> Any:
    schema = orjson.loads(schema_json)
    return validators.validator_for(schema)(schema)


def _valid(text: str, schema_json: bytes) -> bool:
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return False
    return bool(_validator(schema_json).is_valid(answer))


def _field_value(text: str, name: str) -> str | None:
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict) or name not in answer:
        return None
    value = answer[name]
    shown = value if isinstance(value, str) else orjson.dumps(value).decode()
    return shown[:MAX_VALUE_CHARS]
