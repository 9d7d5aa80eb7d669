"""``aios sim-serve``: the simulated engine as an OpenAI-compatible HTTP server.

It puts one :class:`aios.llm.sim.SimEngine` behind ``POST /v1/chat/completions`` (plain and
SSE streaming, tool calls, usage with cached tokens, vLLM's ``priority`` and
``continue_final_message``), ``GET /v1/models`` and ``GET /stats``, so the ``openai``
backend, the benchmark and any OpenAI client can be tested against a real HTTP server
with known, deterministic behaviour. Errors use OpenAI's JSON shape: 400 for a bad
request, 404 for an unknown model, 429 with ``Retry-After`` past the engine's queue cap.

This module must never print except the one "listening on" line of the CLI, never block
the event loop, and never keep a sequence running for a client that went away.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio
import uvicorn
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from aios.errors import (
    AIOSError,
    BackendUnavailable,
    ConfigError,
    ContextWindowExceeded,
    LLMError,
    RateLimited,
)
from aios.llm.base import Chunk, GenerationRequest, Resume
from aios.llm.sim import (
    SimEngine,
    SimEngineConfig,
    SimStream,
    content_text,
    engine_config_from_options,
)
from aios.llm.wire import error_to_wire
from aios.syscalls import LLMChat, Usage

__all__ = [
    "add_sim_serve_arguments",
    "create_sim_app",
    "run_sim_serve",
    "serve_sim",
]


# ------------------------------------------------------------------------- errors


def _wire_error(exc: AIOSError, *, param: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    """An aios error as OpenAI's error JSON, status from the one table (aios.llm.wire)."""
    wire = error_to_wire(exc)
    return _error(wire.status, str(exc), type_=wire.type, code=wire.code, param=param,
                  headers=headers)


def _error(
    status: int,
    message: str,
    *,
    type_: str = "invalid_request_error",
    code: str | None = None,
    param: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # An error may quote the request (a key holding a lone surrogate): never let the
    # quote make the error itself unencodable.
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if param is not None:
        param = param.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, *, status: int = 400) -> None:
        self.message = message
        self.param = param
        self.status = status
        super().__init__(message)


# ------------------------------------------------------------------------ parsing

_MAX_DEPTH = 128
"""Deepest JSON nesting accepted in a request body (tool schemas need a few tens)."""


_MAX_BODY = 32 * 1024 * 1024
"""Largest request body read, in bytes (a 32k-token context is well under 1 MiB)."""


async def _read_body(request: Request) -> bytes:
    """The body, read up to ``_MAX_BODY`` bytes; a larger one is refused before it is
    held in memory (by its Content-Length when it says, else as it arrives)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > _MAX_BODY:
        raise _BadRequest(f"the request body ({declared} bytes) is larger than {_MAX_BODY}",
                          status=413)
    parts: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise _BadRequest(f"the request body is larger than {_MAX_BODY} bytes", status=413)
        parts.append(chunk)
    return b"".join(parts)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _loads(raw: bytes) -> Any:
    """The request body as JSON, or :class:`_BadRequest` saying why not: invalid JSON
    (``NaN``/``Infinity`` included: they are not JSON; nor is a number too large for a
    float, which Python would read as infinity), not UTF-8, nested deeper than
    ``_MAX_DEPTH``, or a string that is not valid Unicode (a lone surrogate such as
    ``"\\ud800"``, which JSON's escapes can spell but no UTF-8 text can hold)."""
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise _BadRequest(f"the request body is nested deeper than {_MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _BadRequest(f"the request body is not valid JSON: {exc}") from None
    # Iterative walk: a recursive one would itself fail on the depth it must refuse.
    stack: list[tuple[Any, int, str]] = [(body, 0, "")]
    while stack:
        node, depth, where = stack.pop()
        if depth > _MAX_DEPTH:
            raise _BadRequest(f"the request body is nested deeper than {_MAX_DEPTH} levels")
        if isinstance(node, str):
            _check_text(node, where)
        elif isinstance(node, float) and not math.isfinite(node):  # 1e999 parses as inf
            raise _BadRequest(f"'{where or 'body'}' is out of range ({node})",
                              where.split(".")[0] or None)
        elif isinstance(node, dict):
            for key, value in node.items():
                path = f"{where}.{key}" if where else str(key)
                _check_text(key, path)
                stack.append((value, depth + 1, path))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{where}.{i}") for i, v in enumerate(node))
    return body


def _check_text(text: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = text[exc.start]
        raise _BadRequest(
            f"'{where or 'body'}' holds a lone surrogate (\\u{ord(bad):04x} at character "
            f"{exc.start}): strings must be valid Unicode",
            where.split(".")[0] or None,
        ) from None


@dataclass(frozen=True, slots=True)
class _Parsed:
    request: GenerationRequest
    stream: bool
    include_usage: bool


def _opt_int(body: dict[str, Any], name: str, *, minimum: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _BadRequest(f"'{name}' must be an integer", name)
    if minimum is not None and value < minimum:
        raise _BadRequest(f"'{name}' must be >= {minimum}", name)
    return value


def _parse(body: Any) -> _Parsed:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' is required: a non-empty list of message objects", "messages")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise _BadRequest("each message must be an object with a string 'role'", "messages")
    max_tokens = _opt_int(body, "max_completion_tokens", minimum=1)
    if max_tokens is None:
        max_tokens = _opt_int(body, "max_tokens", minimum=1)
    n = _opt_int(body, "n")
    if n not in (None, 1):
        raise _BadRequest("only n=1 is supported", "n")
    priority = _opt_int(body, "priority") or 0
    stop_raw = body.get("stop")
    stop: list[str] | None
    if stop_raw is None:
        stop = None
    elif isinstance(stop_raw, str):
        stop = [stop_raw]
    elif isinstance(stop_raw, list) and all(isinstance(s, str) for s in stop_raw):
        stop = list(stop_raw)
    else:
        raise _BadRequest("'stop' must be a string or a list of strings", "stop")
    stream = body.get("stream") is True
    stream_options = body.get("stream_options")
    include_usage = isinstance(stream_options, dict) and stream_options.get("include_usage") is True

    resume: Resume | None = None
    if body.get("continue_final_message") is True:
        # vLLM's continuation: the final assistant message is extended, not answered.
        if body.get("add_generation_prompt", True) is not False:
            raise _BadRequest(
                "continue_final_message requires add_generation_prompt: false",
                "add_generation_prompt",
            )
        last = messages[-1]
        if last.get("role") != "assistant":
            raise _BadRequest(
                "continue_final_message needs the last message to be an assistant message",
                "messages",
            )
        content = last.get("content")
        if not isinstance(content, (str, list)):
            raise _BadRequest(
                "the assistant message to continue needs its text as 'content' (a string "
                "or a list of text parts)",
                "messages",
            )
        text = content_text(content)
        messages = messages[:-1]
        if not messages:
            raise _BadRequest("nothing precedes the assistant message to continue", "messages")
        resume = Resume(text=text, completion_tokens=len(text.split()))
        # Over HTTP, as in vLLM, max_tokens counts the new tokens only; the engine counts
        # the total, continued part included.
        if max_tokens is not None:
            max_tokens += resume.completion_tokens

    try:
        call = LLMChat(
            messages=messages,
            max_tokens=max_tokens,
            temperature=body.get("temperature"),
            top_p=body.get("top_p"),
            stop=stop,
            seed=body.get("seed"),
            tools=body.get("tools"),
            tool_choice=body.get("tool_choice"),
            response_format=body.get("response_format"),
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise _BadRequest(f"'{loc}': {err['msg']}", loc.split(".")[0] or None) from None
    request = GenerationRequest(
        call=call, request_id=f"chatcmpl-{uuid.uuid4().hex}", priority=priority, resume=resume
    )
    return _Parsed(request, stream, include_usage)


# ------------------------------------------------------------------------ replies


def _usage_json(usage: Usage | None) -> dict[str, Any]:
    u = usage or Usage()
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _tool_calls_json(chunk: Chunk, *, with_index: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i, tc in enumerate(chunk.tool_calls or ()):
        item: dict[str, Any] = {
            "id": tc.id,
            "type": "function",
            "function": {"name": tc.name, "arguments": tc.arguments},
        }
        if with_index:
            item = {"index": i, **item}
        out.append(item)
    return out


async def _collect(stream: SimStream) -> tuple[str, Chunk]:
    parts: list[str] = []
    try:
        async for ch in stream:
            if ch.text:
                parts.append(ch.text)
            if ch.finish_reason is not None:
                return "".join(parts), ch
    finally:
        stream.cancel()
    raise BackendUnavailable("sim engine ended a sequence without a final chunk")


async def _complete(request: Request, stream: SimStream, rid: str, model: str) -> Response:
    result: tuple[str, Chunk] | None = None
    failure: LLMError | None = None
    async with anyio.create_task_group() as tg:

        async def watch_disconnect() -> None:
            # The body is read: the next ASGI message is the client going away, and then
            # the sequence is cancelled (freeing its slot) instead of running to the end.
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    tg.cancel_scope.cancel()
                    return

        tg.start_soon(watch_disconnect)
        try:
            result = await _collect(stream)
        except LLMError as exc:
            failure = exc
        tg.cancel_scope.cancel()
    if failure is not None:
        return _wire_error(failure)
    if result is None:  # the client disconnected; nobody reads this
        return Response(status_code=499)
    text, final = result
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if final.tool_calls:
        message["content"] = text or None
        message["tool_calls"] = _tool_calls_json(final, with_index=False)
    body = {
        "id": rid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {"index": 0, "message": message, "logprobs": None, "finish_reason": final.finish_reason}
        ],
        "usage": _usage_json(final.usage),
    }
    return JSONResponse(body)


async def _sse(stream: SimStream, rid: str, model: str, include_usage: bool) -> AsyncIterator[str]:
    """One ``data:`` event per token. The per-token path pastes the JSON-escaped delta into
    a prebuilt envelope instead of serializing a whole chunk object each time."""
    created = int(time.time())
    head = json.dumps(
        {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model},
        separators=(",", ":"),
    )[:-1]
    prefix = "data: " + head + ',"choices":[{"index":0,"delta":'
    suffix = ',"logprobs":null,"finish_reason":null}]}\n\n'
    dumps = json.dumps
    try:
        yield prefix + '{"role":"assistant","content":""}' + suffix
        async for ch in stream:
            if ch.text:
                yield prefix + '{"content":' + dumps(ch.text) + "}" + suffix
            if ch.finish_reason is None:
                continue
            if ch.tool_calls:
                tool_delta = dumps({"tool_calls": _tool_calls_json(ch, with_index=True)})
                yield prefix + tool_delta + suffix
            yield (
                prefix
                + "{}"
                + ',"logprobs":null,"finish_reason":'
                + dumps(ch.finish_reason)
                + "}]}\n\n"
            )
            if include_usage:
                last = {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": _usage_json(ch.usage),
                }
                yield "data: " + dumps(last) + "\n\n"
            break
        yield "data: [DONE]\n\n"
    except LLMError as exc:
        error = {"error": {"message": str(exc), "type": "server_error", "code": None}}
        yield "data: " + dumps(error) + "\n\n"
    finally:
        # Reached on completion and when the client disconnects (Starlette cancels the
        # response task): the sequence stops at the next step and frees its slot.
        stream.cancel()


# ---------------------------------------------------------------------------- app


def create_sim_app(engine: SimEngine) -> Starlette:
    """The OpenAI-compatible ASGI app serving ``engine``."""

    def model_card() -> dict[str, Any]:
        return {"id": engine.model, "object": "model", "created": 0, "owned_by": "aios-sim"}

    def unknown_model(name: str) -> JSONResponse:
        return _error(
            404,
            f"The model '{name}' does not exist; available: {engine.model}",
            code="model_not_found",
            param="model",
        )

    async def chat_completions(request: Request) -> Response:
        try:
            body = _loads(await _read_body(request))
        except _BadRequest as exc:
            return _error(exc.status, exc.message, param=exc.param)
        requested = body.get("model") if isinstance(body, dict) else None
        if requested is not None and not isinstance(requested, str):
            return _error(400, "'model' must be a string", param="model")
        if requested not in (None, "", engine.model):
            return unknown_model(str(requested))
        try:
            parsed = _parse(body)
        except _BadRequest as exc:
            return _error(400, exc.message, param=exc.param)
        try:
            stream = engine.submit(parsed.request)
        except RateLimited as exc:
            retry = exc.retry_after or 1.0
            headers = {
                "Retry-After": str(max(1, math.ceil(retry))),
                "retry-after-ms": str(max(1, math.ceil(retry * 1000))),
            }
            return _wire_error(exc, headers=headers)
        except ContextWindowExceeded as exc:
            return _wire_error(exc, param="messages")
        except LLMError as exc:
            return _wire_error(exc)
        rid = parsed.request.request_id
        if parsed.stream:
            return StreamingResponse(
                _sse(stream, rid, engine.model, parsed.include_usage),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return await _complete(request, stream, rid, engine.model)

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request: Request) -> Response:
        name = request.path_params["model"]
        if name != engine.model:
            return unknown_model(name)
        return JSONResponse(model_card())

    async def get_stats(request: Request) -> Response:
        return JSONResponse(engine.stats())

    async def reset_stats(request: Request) -> Response:
        engine.reset_stats()
        return JSONResponse({"ok": True})

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        detail = exc.detail if isinstance(exc, HTTPException) else "internal error"
        return _error(status, f"{request.method} {request.url.path}: {detail}")

    async def internal_error(request: Request, exc: Exception) -> Response:
        # A bug of the server: still OpenAI's JSON shape (the traceback goes to the log).
        return _error(500, f"{request.method} {request.url.path}: internal error "
                      f"({type(exc).__name__})", type_="server_error", code="internal_error")

    routes = [
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/stats", get_stats, methods=["GET"]),
        Route("/stats/reset", reset_stats, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ]
    return Starlette(
        routes=routes,
        exception_handlers={HTTPException: http_error, Exception: internal_error},
    )


# ------------------------------------------------------------------------- server


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: whoever runs :func:`serve_sim` (the CLI,
    a test, an app) owns signals and stops the server by cancelling it. ``settled`` is set
    once startup has succeeded or the server has ended."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.settled = anyio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.settled.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_sim(
    host: str = "127.0.0.1",
    port: int = 0,
    engine_config: SimEngineConfig | None = None,
    *,
    engine: SimEngine | None = None,
    started: Callable[[str], object] | None = None,
    log_level: str = "warning",
) -> None:
    """Serve a sim engine over HTTP until cancelled, then shut down gracefully.

    ``port=0`` picks a free port; ``started(base_url)`` is called once listening, with the
    ``http://host:port/v1`` base URL. Pass ``engine`` to serve an existing engine (it is
    not closed on exit); otherwise one is built from ``engine_config`` and closed.
    """
    own = engine is None
    eng = engine if engine is not None else SimEngine(engine_config)
    app = create_sim_app(eng)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}", key="port") from None
    bound = sock.getsockname()[1]
    url_host = f"[{host}]" if family == socket.AF_INET6 else host
    url = f"http://{url_host}:{bound}/v1"
    config = uvicorn.Config(
        app,
        log_level=log_level,
        log_config=None,
        lifespan="off",
        ws="none",
        access_log=False,
        timeout_graceful_shutdown=1,
    )
    server = _Server(config)
    done = anyio.Event()

    async def run() -> None:
        try:
            # Shielded: the server stops through should_exit, so it can close its
            # connections cleanly even when serve_sim is cancelled.
            with anyio.CancelScope(shield=True):
                await server.serve(sockets=[sock])
        finally:
            done.set()
            server.settled.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(run)
            try:
                await server.settled.wait()
                if server.started and started is not None:
                    started(url)
                await done.wait()
            finally:
                server.should_exit = True
                if own:
                    # In-flight streams end now with an error event instead of holding
                    # the shutdown until the graceful timeout.
                    with anyio.CancelScope(shield=True):
                        await eng.close()
    finally:
        sock.close()


# ---------------------------------------------------------------------------- CLI

_ENGINE_ARGS: tuple[tuple[str, str, type, str], ...] = (
    ("--slots", "slots", int, "sequences decoded together (default 8)"),
    ("--step-base-ms", "step_base_ms", float, "fixed cost of a decode step (default 2.0)"),
    ("--step-per-seq-ms", "step_per_seq_ms", float, "step cost per running sequence (0.25)"),
    (
        "--prefill-ms-per-token",
        "prefill_ms_per_token",
        float,
        "prefill cost per uncached prompt token (0.01)",
    ),
    ("--prefix-cache-tokens", "prefix_cache_tokens", int, "prefix cache capacity (1000000)"),
    ("--queue-cap", "queue_cap", int, "max waiting requests beyond free slots; then 429"),
    ("--default-max-tokens", "default_max_tokens", int, "max_tokens when not given (64)"),
    ("--max-context", "max_context", int, "context window in tokens (32768)"),
    ("--model", "model", str, "model name served (default sim)"),
    ("--time-scale", "time_scale", float, "multiplies every cost (default 1.0)"),
)


def add_sim_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``aios sim-serve``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port; 0 picks a free one")
    for flag, dest, typ, help_ in _ENGINE_ARGS:
        parser.add_argument(flag, dest=dest, type=typ, default=None, help=help_)
    parser.add_argument(
        "--no-tool-calls",
        dest="tool_calls",
        action="store_false",
        default=None,
        help="never answer with a tool call",
    )
    parser.add_argument(
        "--log-level",
        dest="log_level",
        default="warning",
        choices=["critical", "error", "warning", "info", "debug"],
        help="uvicorn log level",
    )


def run_sim_serve(args: argparse.Namespace) -> int:
    """Run ``aios sim-serve`` until SIGINT/SIGTERM; returns the exit code."""
    options: dict[str, Any] = {}
    for _, dest, _, _ in _ENGINE_ARGS:
        value = getattr(args, dest, None)
        if value is not None:
            options[dest] = value
    if getattr(args, "tool_calls", None) is not None:
        options["tool_calls"] = args.tool_calls
    try:
        engine_config = engine_config_from_options(options)
    except ConfigError as exc:
        sys.stderr.write(f"aios sim-serve: error: {exc}\n")
        return 2

    def on_started(url: str) -> None:
        print(f"aios sim-serve listening on {url}", flush=True)

    async def main() -> None:
        async with anyio.create_task_group() as tg:

            async def serve() -> None:
                await serve_sim(
                    args.host,
                    args.port,
                    engine_config,
                    started=on_started,
                    log_level=getattr(args, "log_level", "warning"),
                )
                tg.cancel_scope.cancel()

            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                tg.start_soon(serve)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    try:
        anyio.run(main)
    except ConfigError as exc:
        sys.stderr.write(f"aios sim-serve: error: {exc}\n")
        return 1
    return 0


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aios.llm.server", description="the sim engine over HTTP"
    )
    add_sim_serve_arguments(parser)
    return run_sim_serve(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(_main())
