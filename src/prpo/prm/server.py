"""Serve any PRM over HTTP (Starlette + uvicorn), batching concurrent requests into one model call.

API:
- `POST /score` `{"problems": [...], "segments": [[...], ...]}` -> `{"scores": [[...], ...]}`.
  Errors are `{"error": message}`; 4xx means the request is at fault (the client does not retry
  it), 5xx the server (the client retries):
  400 a body that is not JSON; 413 a body over `max_request_bytes` (default 16 MiB), more than
  `max_responses` responses (1024) or a response with more than `max_segments` segments (256);
  422 a request the PRM rejects (wrong shapes, an input over the model's length limit, raised as
  PRMError by `prm.score`); 500 a PRM fault: it raised another exception, or returned scores
  that are not one finite value in [0, 1] per segment (NaN included).
- `GET /health` -> `{"status": "ok", "prm_id": ...}`.
With a token, every request needs `Authorization: Bearer <token>` (else 401).

Requests that arrive within `batch_window` seconds of each other (up to `max_batch_responses`
responses) are scored in one `prm.score` call, run in a worker thread so the event loop keeps
accepting requests; the model is used by one call at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from prpo.prm.base import PRMError, ProcessRewardModel, check_inputs, validate_scores

Pending = tuple[list[str], list[list[str]], asyncio.Future]

MAX_REQUEST_BYTES = 16 * 2**20
MAX_RESPONSES = 1024
MAX_SEGMENTS = 256


class InvalidScores(Exception):
    """The PRM returned scores that fail `validate_scores`: the server's fault (HTTP 500)."""


class ScoreBatcher:
    """Queue of pending /score requests, drained into one `prm.score` call per batch window."""

    def __init__(self, prm: ProcessRewardModel, batch_window: float, max_batch_responses: int):
        self.prm, self.batch_window, self.max_batch_responses = prm, batch_window, max_batch_responses
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()

    async def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((problems, segments, future))
        return await future

    async def run(self) -> None:
        """Forever: wait for a request, gather more for `batch_window` seconds, score them together."""
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            size, deadline = len(batch[0][1]), loop.time() + self.batch_window
            while size < self.max_batch_responses and (left := deadline - loop.time()) > 0:
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
                size += len(batch[-1][1])
            await self._score_batch(batch)

    async def _score_batch(self, batch: list[Pending]) -> None:
        problems = [p for item in batch for p in item[0]]
        segments = [s for item in batch for s in item[1]]
        try:
            scores = await asyncio.to_thread(self.prm.score, problems, segments)
            try:
                scores = validate_scores(scores, segments)
            except PRMError as err:
                raise InvalidScores(f"the PRM returned invalid scores: {err}") from err
        except Exception as err:
            if len(batch) > 1:  # score the requests one by one, so only the failing one fails
                for item in batch:
                    await self._score_batch([item])
                return
            if not batch[0][2].done():
                batch[0][2].set_exception(err)
            return
        start = 0
        for _, item_segments, future in batch:
            if not future.done():
                future.set_result(scores[start : start + len(item_segments)])
            start += len(item_segments)


def create_app(
    prm: ProcessRewardModel,
    token: str | None = None,
    batch_window: float = 0.01,
    max_batch_responses: int = 256,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    max_responses: int = MAX_RESPONSES,
    max_segments: int = MAX_SEGMENTS,
) -> Starlette:
    """The Starlette app serving `prm`; `token` (if given) is required as a bearer token.

    `max_request_bytes`, `max_responses` (per request) and `max_segments` (per response) bound what
    one request may hold; over them the answer is 413.
    """
    for name, value in (("max_request_bytes", max_request_bytes), ("max_responses", max_responses),
                        ("max_segments", max_segments), ("max_batch_responses", max_batch_responses)):
        if value < 1:
            raise ValueError(f"{name} = {value} must be a positive integer")
    batcher = ScoreBatcher(prm, batch_window, max_batch_responses)

    def authorized(request: Request) -> bool:
        if token is None:
            return True
        given = request.headers.get("authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    async def health(request: Request) -> JSONResponse:
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        return JSONResponse({"status": "ok", "prm_id": prm.prm_id})

    async def read_body(request: Request) -> bytes | None:
        """The body, or None once it is known to exceed `max_request_bytes` (declared or streamed)."""
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_request_bytes:
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_request_bytes:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    def over_limit(body: dict[str, Any]) -> str | None:
        segments = body["segments"]
        if len(segments) > max_responses:
            return (f"the request holds {len(segments)} responses, over the server's limit of {max_responses} "
                    "per request: send fewer (the client's max_batch_responses) or raise --max-responses")
        for i, response in enumerate(segments):
            if len(response) > max_segments:
                return (f"response {i} has {len(response)} segments, over the server's limit of {max_segments} "
                        "per response: segment more coarsely or raise --max-segments")
        return None

    async def score(request: Request) -> JSONResponse:
        if not authorized(request):
            return error(401, "missing or wrong bearer token")
        raw = await read_body(request)
        if raw is None:
            return error(413, f"request body over the server's limit of {max_request_bytes} bytes: send fewer "
                              "responses per request (the client's max_batch_responses) or raise --max-request-bytes")
        try:
            body: Any = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            return error(400, f"request body is not valid JSON: {err}")
        if not isinstance(body, dict) or set(body) != {"problems", "segments"}:
            return error(422, 'body must be a JSON object with exactly the keys "problems" and "segments"')
        if not isinstance(body["problems"], list) or not isinstance(body["segments"], list):
            return error(422, '"problems" and "segments" must be JSON lists')
        try:
            check_inputs(body["problems"], body["segments"])
            if (message := over_limit(body)) is not None:
                return error(413, message)
            scores = await batcher.score(body["problems"], [list(s) for s in body["segments"]])
        except PRMError as err:
            return error(422, str(err))
        except Exception as err:
            return error(500, f"PRM failed: {type(err).__name__}: {err}")
        return JSONResponse({"scores": scores})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()

    return Starlette(routes=[Route("/health", health), Route("/score", score, methods=["POST"])], lifespan=lifespan)


def serve(app: Starlette, host: str = "127.0.0.1", port: int = 8765, log_level: str = "info") -> None:
    """Run `app` with uvicorn until interrupted."""
    uvicorn.run(app, host=host, port=port, log_level=log_level)


@contextlib.contextmanager
def background_server(
    app: Starlette, host: str = "127.0.0.1", port: int = 0, start_timeout: float = 30.0
) -> Iterator[str]:
    """Run `app` with uvicorn in a thread; yields its base URL and stops it on exit (port 0: a free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError(f"the PRM server on {host}:{sock.getsockname()[1]} did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
