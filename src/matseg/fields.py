"""The one pydantic base for what a user writes (profiles, dataset specs): unknown keys are
errors, numbers must be finite, and ``true`` / ``false`` is never taken as a number.

Python's JSON parser reads ``Infinity`` and ``NaN``, and pydantic's lax mode turns ``true`` into
1; both then travel silently into training (an infinite time budget overflows, ``"batch_size":
true`` becomes 1). Refusing them here, once, covers every block and every spec field.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

_NUMBERS = (int, float)

# A name a user gives that becomes a file or folder name: no separator, no "..", no leading dot
# or dash (hidden files, command-line options), so it can never leave its folder.
SAFE_NAME = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


def _takes_number(annotation: Any) -> bool:
    """True when a field takes only a number (optionally None), not bool: ``int``, ``float``,
    ``int | None``, ``Annotated[float, ...]``."""
    if typing.get_origin(annotation) is typing.Annotated:
        return _takes_number(typing.get_args(annotation)[0])
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(members) and all(_takes_number(a) for a in members)
    return annotation in _NUMBERS


class UserModel(BaseModel):
    """A block of user-written JSON: unknown keys, non-finite numbers and booleans given for
    numbers are errors that name the field."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _no_boolean_numbers(cls, data: Any) -> Any:
        # A field validator would name the field itself, but pydantic allows none on a
        # discriminator field; a boolean is passed on as its JSON word instead, which the
        # number field then refuses with its own message, location and input ('true').
        if not isinstance(data, dict):
            return data
        out = dict(data)
        for name, field in cls.model_fields.items():
            key = field.alias if field.alias in data else name
            if isinstance(data.get(key), bool) and _takes_number(field.annotation):
                out[key] = "true" if data[key] else "false"
        return out


def _where(loc: tuple[int | str, ...]) -> str:
    # pydantic's internal steps (``function-after[...]``) are no place a user wrote
    parts = [str(p) for p in loc if not (isinstance(p, str) and "[" in p)]
    return ".".join(parts) or "(top level)"


def _expected(err: Any) -> str:
    if err["type"] == "missing":
        return "a value (required)"
    if err["type"] == "extra_forbidden":
        return "no such field (check its spelling)"
    if err["type"] == "union_tag_invalid":
        ctx = err.get("ctx", {})
        return f"{ctx.get('discriminator')} one of {ctx.get('expected_tags')}"
    msg = str(err["msg"])
    for prefix in ("Value error, ", "Assertion failed, ", "Input should be "):
        msg = msg.removeprefix(prefix)
    return msg.split(", unable to parse", 1)[0]


def problems(exc: ValidationError, width: int = 60) -> list[tuple[str, str, str]]:
    """Each validation error in a user's words: (field path, what was expected, what was
    found), the found value shortened to ``width`` characters; no pydantic wording."""
    out = []
    for err in exc.errors():
        found = "nothing" if err["type"] == "missing" else repr(err.get("input"))
        if len(found) > width:
            found = found[: width - 3] + "..."
        out.append((_where(err["loc"]), _expected(err), found))
    return out


def first_problem(exc: ValidationError, width: int = 60) -> tuple[str, str, str]:
    """:func:`problems`' first, its found value followed by how many more there are."""
    found = problems(exc, width)
    where, expected, value = found[0]
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    return where, expected, value + more
