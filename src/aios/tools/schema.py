"""Check arguments against a provider's JSON schema (MCP and plugin tools).

Function tools are validated by their pydantic model; tools that come with only a JSON
schema are checked here, one level deep: required, unknown (when the schema forbids
extra properties), type and enum of each top-level property. Deeper checks are the
server's (an MCP server validates again and answers ``isError``). This keeps the
common mistakes of a model (missing, extra, mistyped fields) named before a server
round trip, without a JSON-schema dependency.
"""

from __future__ import annotations

import json
from typing import Any

from aios.errors import ToolArgumentsInvalid
from aios.tools.function import bad_arguments_message

__all__ = ["check_arguments"]

_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "array": (list, tuple),
    "object": (dict,),
    "null": (type(None),),
}


def check_arguments(tool: str, schema: dict[str, Any], arguments: dict[str, Any] | str
                    ) -> dict[str, Any]:
    """The arguments as a dict, or :class:`ToolArgumentsInvalid` naming each bad field."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments or "{}")
        except ValueError as exc:
            errors = [{"loc": "", "msg": f"Invalid JSON: {exc}", "type": "json_invalid"}]
            raise ToolArgumentsInvalid(bad_arguments_message(tool, errors, schema),
                                       tool=tool, errors=errors) from None
    else:
        parsed = arguments
    if not isinstance(parsed, dict):
        errors = [{"loc": "", "msg": "Input should be a JSON object",
                   "type": "model_type"}]
        raise ToolArgumentsInvalid(bad_arguments_message(tool, errors, schema),
                                   tool=tool, errors=errors)
    errors = _errors(schema, parsed)
    if errors:
        raise ToolArgumentsInvalid(bad_arguments_message(tool, errors, schema),
                                   tool=tool, errors=errors)
    return parsed


def _errors(schema: dict[str, Any], args: dict[str, Any]) -> list[dict[str, Any]]:
    props: dict[str, Any] = schema.get("properties") or {}
    errors = [{"loc": name, "msg": "Field required", "type": "missing"}
              for name in schema.get("required", ()) if name not in args]
    for name, value in args.items():
        prop = props.get(name)
        if prop is None:
            if schema.get("additionalProperties") is False:
                errors.append({"loc": name, "msg": "Extra inputs are not permitted",
                               "type": "extra_forbidden"})
            continue
        msg = _type_error(prop, value)
        if msg:
            errors.append({"loc": name, "msg": msg, "type": "type_error"})
    return errors


def _type_error(prop: dict[str, Any], value: Any) -> str | None:
    if "enum" in prop and value not in prop["enum"]:
        return f"Input should be one of {', '.join(map(repr, prop['enum']))}"
    t = prop.get("type")
    if t is None:
        if "anyOf" in prop and all(_type_error(p, value) for p in prop["anyOf"]):
            return f"Input does not match any allowed type (got {type(value).__name__})"
        return None
    types = [t] if isinstance(t, str) else list(t)
    for name in types:
        ok = _TYPES.get(name)
        if ok is None:
            return None  # a type we do not know: leave it to the server
        if isinstance(value, ok) and not (isinstance(value, bool) and name != "boolean"):
            return None
        if name == "integer" and isinstance(value, float) and value.is_integer():
            return None
    return f"Input should be of type {' or '.join(types)} (got {type(value).__name__})"
