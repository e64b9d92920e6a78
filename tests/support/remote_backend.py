"""A small fault-injecting OpenAI-style backend, and the helpers of the RemoteRunner tests.

An ASGI app served by hypercorn in the test's nursery, on loopback, with the real clock. It
generates with MockRunner (so ``token_at`` predicts every token) and answers each completion
with the next action of its script (or ``default``): ``"ok"``, ``"429"`` (with Retry-After),
``"500"``, ``"401"``, ``"400"``, ``"404"``, ``"drop"`` (two events, then the connection is cut),
``"stall"`` (headers, then silence), ``"hang"`` (silence, no headers), ``"error-event"`` (an SSE
error event after the first event), ``"malformed"`` (choices that are not objects),
``"echo-key"`` (a 401 whose message repeats the Authorization header).
``open_backend`` runs it; cancelling ``handle.scope`` takes it down (connections refused), and
``handle.stopped`` is set once it is down.
"""

from __future__ import annotations

import collections
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from trio_supervise import Batch, FinishReason, Request, SamplingParams, open_worker
from trio_supervise.runners.mock import MockRunner, token_at
from trio_supervise.serve import ServeConfig

REMOTE = "trio_supervise.runners.remote:RemoteRunner"
VOCAB = 50_000

ACTIONS = ("ok", "429", "500", "401", "400", "404", "drop", "stall", "hang", "error-event",
           "malformed", "echo-key")  # fmt: skip


class Dropped(Exception):
    """Raised in the app to make hypercorn cut the connection mid-response."""


@attrs.define(eq=False)
class Backend:
    """The app and its knobs (the test changes them while it runs)."""

    model: str = "mock"
    key: str | None = None
    script: collections.deque[str] = attrs.Factory(collections.deque)
    default: str = "ok"
    chaos: float = 0.0
    """With ``chaos`` > 0, each completion fails with that probability (a seeded choice)."""
    rng: random.Random = attrs.Factory(lambda: random.Random(7))
    models_status: int = 200
    delay: float = 0.0
    completions: int = 0
    models_calls: int = 0
    auth_seen: list[str] = attrs.Factory(list)
    last_auth: str = ""
    disconnects: int = 0
    """Stalled completions whose client went away."""
    disconnected: trio.Event = attrs.Factory(trio.Event)
    arrived: trio.Event = attrs.Factory(trio.Event)
    """Set (then replaced) each time a completion request arrives."""
    chat: bool = False
    """Whether the last completion came through the chat endpoint."""
    peers: set[tuple[str, int]] = attrs.Factory(set)
    """The client ends of the connections the completions came on."""

    def next_action(self) -> str:
        if self.script:
            return self.script.popleft()
        if self.chaos and self.rng.random() < self.chaos:
            return self.rng.choice(("429", "500", "drop", "stall", "error-event"))
        return self.default

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].removeprefix("lifespan.")
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"").decode()
        self.auth_seen.append(auth)
        self.last_auth = auth
        if self.key is not None and auth != f"Bearer {self.key}":
            await _json(send, 401, {"error": {"message": "bad key", "code": 401}})
            return
        if scope["path"] == "/v1/models":
            self.models_calls += 1
            if self.models_status != 200:
                await _json(
                    send,
                    self.models_status,
                    {"error": {"message": "not yet"}},
                    [(b"retry-after", b"0")],
                )
                return
            await _json(send, 200, {"object": "list", "data": [{"id": self.model}]})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        self.completions += 1
        host, port = scope["client"]
        self.peers.add((host, port))
        self.arrived.set()
        self.arrived = trio.Event()
        data = json.loads(body)
        self.chat = scope["path"] == "/v1/chat/completions"
        if self.chat:  # the chat endpoint: the last message's content is the prompt
            data["prompt"] = data["messages"][-1]["content"]
        await self.completion(data, receive, send)

    async def completion(self, data: dict[str, Any], receive: Any, send: Any) -> None:
        action = self.next_action()
        if action == "hang":  # not even the headers, until the client gives up
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnects += 1
            self.disconnected.set()
            return
        if action == "404":
            await _json(send, 404, {"error": {"message": f"no model {data['model']!r}"}})
            return
        if action == "echo-key":  # a careless server that repeats the credentials it got
            await _json(send, 401, {"error": {"message": f"bad key in {self.last_auth!r}"}})
            return
        if action == "malformed":  # an event whose choices are not objects
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await _event(send, {"choices": ["oops"]})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
            return
        if action in ("429", "500", "401", "400"):
            extra = [(b"retry-after", b"2")] if action == "429" else []
            await _json(send, int(action), {"error": {"message": f"injected {action}"}}, extra)
            return
        request = Request(
            "r",
            data["prompt"],
            SamplingParams(
                max_tokens=data["max_tokens"],
                seed=data.get("seed"),
                stop=tuple(data.get("stop", ())),
            ),
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        if action == "stall":  # silence until the client gives up
            while (await receive())["type"] != "http.disconnect":
                pass
            self.disconnects += 1
            self.disconnected.set()
            return
        chunks = MockRunner(delay=self.delay).execute(Batch([request], 0))
        async with contextlib.aclosing(chunks):
            await self._stream(chunks, action, send)
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _stream(self, chunks: Any, action: str, send: Any) -> None:
        sent = 0
        async for chunk in chunks:
            if action == "drop" and sent == 2:
                raise Dropped("injected: connection cut mid-stream")
            if action == "error-event" and sent == 1:
                await _event(
                    send, {"error": {"message": "injected", "type": "ServerError", "code": 503}}
                )
                break
            finish = None
            if chunk.finish_reason is not None:
                finish = "length" if chunk.finish_reason is FinishReason.LENGTH else "stop"
            event: dict[str, Any] = {
                "choices": [
                    {
                        "index": 0,
                        "token_ids": list(chunk.token_ids),
                        "finish_reason": finish,
                        **(
                            {"delta": {"content": chunk.text}}
                            if self.chat
                            else {"text": chunk.text}
                        ),
                    }
                ],
            }
            if chunk.usage is not None:
                event["usage"] = {
                    "prompt_tokens": chunk.usage.prompt_tokens,
                    "completion_tokens": chunk.usage.completion_tokens,
                }
            await _event(send, event)
            sent += 1
            if self.delay:
                await trio.sleep(self.delay)


async def _json(
    send: Any, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *(headers or [])],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


async def _event(send: Any, body: dict[str, Any]) -> None:
    data = b"data: " + json.dumps(body).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": data, "more_body": True})


@attrs.define(eq=False)
class Running:
    backend: Backend
    port: int
    scope: trio.CancelScope
    """Cancelling it takes the backend down."""
    stopped: trio.Event = attrs.Factory(trio.Event)
    """Set once the backend is down (its listening socket closed: connections are refused)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


async def run_backend(
    backend: Backend,
    port: int | socket.socket,
    *,
    task_status: trio.TaskStatus[Running] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``backend`` on ``port`` until the returned handle's scope is cancelled: 0 is a free
    port, bound at once; a socket bound already (not listening: connections to it are refused)
    is taken over, so that nothing else can take its port meanwhile."""
    config = Config()
    if isinstance(port, socket.socket):
        config.bind = [f"fd://{port.detach()}"]
        port = 0
    else:
        config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.1
    # hypercorn notices a client's close of a streamed connection only at its keep-alive
    # timeout: short, so its handler tasks end soon after the runner's client closes.
    config.keep_alive_timeout = 0.2
    scope = trio.CancelScope()
    running = Running(backend, port, scope)

    async def started(*, task_status: trio.TaskStatus[Any]) -> None:
        await serve(backend, config, task_status=task_status)  # type: ignore[arg-type]

    try:
        with scope:
            async with trio.open_nursery() as nursery:
                (bound,) = await nursery.start(started)  # "http://127.0.0.1:PORT"
                running.port = int(bound.rsplit(":", 1)[1])
                task_status.started(running)
    finally:
        running.stopped.set()


@asynccontextmanager
async def open_backend(backend: Backend | None = None, port: int = 0) -> AsyncIterator[Running]:
    async with trio.open_nursery() as nursery:
        running: Running = await nursery.start(run_backend, backend or Backend(), port)
        yield running
        nursery.cancel_scope.cancel()


def request(rid: str, max_tokens: int = 5, seed: int = 1, prompt: str = "hello") -> Request:
    """A request of ``max_tokens`` tokens, seeded (a MockRunner's text is its seed's)."""
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, seed=seed))


def expected_text(req: Request) -> list[int]:
    """The token ids the backend's MockRunner generates for ``req``."""
    return [token_at(req, i, VOCAB) for i in range(req.params.max_tokens)]


def remote_worker(url: str, *, model: str = "mock", **kwargs: Any) -> Any:
    """``open_worker`` for a RemoteRunner at ``url``: runner arguments and worker options mixed
    (``on_event`` and ``policy`` go to the worker, the rest to the runner)."""
    worker = {key: kwargs.pop(key) for key in ("on_event", "policy") if key in kwargs}
    return open_worker(REMOTE, runner_args={"base_url": url, "model": model, **kwargs}, **worker)


def front_config(url: str, **worker: Any) -> ServeConfig:
    """A serve config whose one model is a RemoteRunner in front of ``url``."""
    args = {"base_url": url, "model": "mock", **worker.pop("runner_args", {})}
    return ServeConfig.from_dict(
        {
            "server": {"port": 0, "drain_timeout": 2},
            "batching": {"max_wait": 0.001},
            "workers": [{"name": "front", "runner": REMOTE, "runner_args": args, **worker}],
        }
    )
