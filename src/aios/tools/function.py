"""``@aios.tool``: a Python function as a tool, its JSON schema derived by pydantic.

The signature gives the schema (``int``, ``Literal``, ``list[...]``, pydantic models,
defaults, ``Annotated[..., Field(description=...)]``); the docstring gives the
description, and per-parameter descriptions from a Google-style ``Args:`` section. A
first parameter annotated :class:`aios.Context` receives the caller's context and is
left out of the schema. Validation is a pydantic model with ``extra="forbid"``, so
missing, extra and mistyped arguments are each named. Nothing here runs a tool on its
own: the kernel's handler does, under its queue and timeout.
"""

from __future__ import annotations

import inspect
import math
import re
import typing
from collections.abc import Callable
from typing import Any, overload

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from aios.errors import ConfigError, ToolArgumentsInvalid
from aios.tools.base import OPENAI_NAME, ToolSpec

__all__ = ["Tool", "bad_arguments_message", "tool"]


class Tool:
    """A function with its schema and limits; calling it calls the function."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str | None = None,
        description: str | None = None,
        timeout_s: float | None = None,
        max_concurrency: int | None = None,
        irreversible: bool = False,
    ) -> None:
        self.fn = fn
        name = name or str(getattr(fn, "__name__", ""))
        if not OPENAI_NAME.match(name):
            raise ConfigError(
                f"tool name {name!r} is not a valid OpenAI function name "
                "(1-64 letters, digits, '_' or '-')", key="tools")
        if timeout_s is not None and not (
                isinstance(timeout_s, (int, float)) and not isinstance(timeout_s, bool)
                and math.isfinite(timeout_s) and timeout_s > 0):
            raise ConfigError(f"tool {name!r}: timeout_s must be a finite number of seconds "
                              f"> 0, got {timeout_s!r}", key="tools")
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigError(f"tool {name!r}: max_concurrency must be >= 1", key="tools")
        self.is_async = inspect.iscoroutinefunction(fn)
        summary, arg_docs = _parse_docstring(inspect.getdoc(fn) or "")
        self.context_param, self.model = _signature_model(fn, name)
        self.fields = tuple(self.model.model_fields)
        self.spec = ToolSpec(
            name=name,
            description=description if description is not None else summary,
            parameters=_schema(self.model, arg_docs),
            timeout_s=timeout_s,
            max_concurrency=max_concurrency,
            irreversible=irreversible,
        )
        self.__doc__ = fn.__doc__
        self.__name__ = name

    @property
    def name(self) -> str:
        return self.spec.name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<aios.tool {self.name}>"

    def validate(self, arguments: dict[str, Any] | str) -> dict[str, Any]:
        """Validated keyword arguments; :class:`ToolArgumentsInvalid` names each bad
        field (a string that is not JSON is one such error)."""
        try:
            if isinstance(arguments, str):
                m = self.model.model_validate_json(arguments or "{}")
            else:
                m = self.model.model_validate(arguments)
        except ValidationError as exc:
            errors = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"],
                       "type": e["type"]} for e in exc.errors(include_url=False)]
            raise ToolArgumentsInvalid(
                bad_arguments_message(self.name, errors, self.spec.parameters),
                tool=self.name, errors=errors) from None
        return {f: getattr(m, f) for f in self.fields}

    async def invoke(self, ctx: Any, kwargs: dict[str, Any]) -> Any:
        """Run the function (a sync one in a worker thread, abandoned on cancel: a
        thread cannot be interrupted, but its slot is freed at once)."""
        if self.context_param is not None:
            kwargs = {self.context_param: ctx, **kwargs}
        if self.is_async:
            return await self.fn(**kwargs)
        return await anyio.to_thread.run_sync(
            lambda: self.fn(**kwargs), abandon_on_cancel=True)


@overload
def tool(fn: Callable[..., Any], /) -> Tool: ...
@overload
def tool(
    *, name: str | None = None, description: str | None = None,
    timeout_s: float | None = None, max_concurrency: int | None = None,
    irreversible: bool = False,
) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    timeout_s: float | None = None,
    max_concurrency: int | None = None,
    irreversible: bool = False,
) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a sync or async function a tool: ``@aios.tool`` or ``@aios.tool(name=...)``.

    ``timeout_s`` (seconds) and ``max_concurrency`` (calls at once) default to the
    ``[tools]`` config; ``irreversible=True`` calls need approval. Raises
    :class:`aios.ConfigError` for a name OpenAI would refuse or a signature that
    cannot be a schema (``*args``, positional-only parameters).
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, timeout_s=timeout_s,
                    max_concurrency=max_concurrency, irreversible=irreversible)

    return wrap(fn) if fn is not None else wrap


def bad_arguments_message(
    tool: str, errors: list[dict[str, Any]], schema: dict[str, Any] | None = None
) -> str:
    """The text a model gets back for invalid arguments: each bad field, what was
    wrong, and the type its schema expects, then an invitation to retry (Pydantic AI's
    retry prompt, in prose)."""
    props = (schema or {}).get("properties", {})
    lines = [f"Invalid arguments for tool {tool!r}:"]
    for e in errors:
        loc = e["loc"] or "(arguments)"
        expected = _expected(props.get(loc.split(".")[0]))
        hint = f" (expected {expected})" if expected and e["type"] != "extra_forbidden" else ""
        if e["type"] == "extra_forbidden":
            hint = f" (known: {', '.join(props) or 'none'})"
        lines.append(f"- {loc}: {e['msg']}{hint}")
    lines.append("Fix the arguments and call the tool again.")
    return "\n".join(lines)


def _expected(prop: dict[str, Any] | None) -> str:
    if not prop:
        return ""
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"])
    if "const" in prop:
        return repr(prop["const"])
    if "anyOf" in prop:
        return " or ".join(filter(None, (_expected(p) for p in prop["anyOf"])))
    t = prop.get("type")
    if t == "array" and isinstance(prop.get("items"), dict):
        inner = _expected(prop["items"])
        return f"array of {inner}" if inner else "array"
    if "$ref" in prop:
        return "object " + str(prop["$ref"]).rsplit("/", 1)[-1]
    return str(t) if t else ""


def _signature_model(fn: Callable[..., Any], name: str) -> tuple[str | None, type[BaseModel]]:
    """The context parameter's name (or None) and a pydantic model of the others."""
    from aios.context import Context  # late: aios.context imports the kernel's world

    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:  # an unresolvable annotation: name it
        raise ConfigError(f"tool {name!r}: cannot resolve annotations: {exc}",
                          key="tools") from None
    fields: dict[str, Any] = {}
    context_param: str | None = None
    for i, p in enumerate(inspect.signature(fn).parameters.values()):
        hint = hints.get(p.name, Any)
        if isinstance(hint, type) and issubclass(hint, Context):
            if i != 0:
                raise ConfigError(f"tool {name!r}: parameter {p.name!r} is a Context: the "
                                  "Context must be the first parameter", key="tools")
            context_param = p.name
            continue
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
            raise ConfigError(f"tool {name!r}: parameter {p.name!r} must be a plain or "
                              "keyword-only parameter", key="tools")
        if p.name.startswith("_"):
            raise ConfigError(f"tool {name!r}: parameter {p.name!r} starts with '_'",
                              key="tools")
        fields[p.name] = (hint, ... if p.default is p.empty else p.default)
    model = create_model(
        f"{name}_arguments", __config__=ConfigDict(extra="forbid"), **fields)
    return context_param, model


def _schema(model: type[BaseModel], arg_docs: dict[str, str]) -> dict[str, Any]:
    schema = model.model_json_schema()
    schema.pop("title", None)
    props: dict[str, Any] = schema.setdefault("properties", {})
    for pname, prop in props.items():
        prop.pop("title", None)
        if pname in arg_docs and "description" not in prop:
            prop["description"] = arg_docs[pname]
    schema["additionalProperties"] = False
    return schema


_ARG_LINE = re.compile(r"^\s{2,}(\w+)\s*(?:\([^)]*\))?\s*:\s*(.*)$")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(description, {param: description}) from a docstring with an optional
    Google-style ``Args:`` section; other sections (``Returns:``...) are dropped."""
    summary: list[str] = []
    args: dict[str, str] = {}
    section = ""
    last = ""
    for line in doc.splitlines():
        head = line.strip()
        if re.fullmatch(r"(Args|Arguments|Parameters|Returns|Raises|Yields|Examples?):", head):
            section = head[:-1]
            continue
        if not section:
            summary.append(line)
        elif section in ("Args", "Arguments", "Parameters"):
            m = _ARG_LINE.match(line)
            if m:
                last = m.group(1)
                args[last] = m.group(2).strip()
            elif head and last:
                args[last] = f"{args[last]} {head}".strip()
    return "\n".join(summary).strip(), args
