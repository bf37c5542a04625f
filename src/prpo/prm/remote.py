"""Client of a PRM served over HTTP by `prpo serve-prm` (see `prpo.prm.server` for the API).

Big batches are split into requests of at most `max_batch_responses` responses. Connection errors,
timeouts and 5xx answers (a fault on the server's side: the PRM crashed or returned invalid
scores, such as NaN) are retried `retries` times with exponential backoff (`backoff * 2**k`
seconds), then raise PRMError naming the endpoint and the last error; a 4xx answer (the request's
fault: bad token, an input the PRM rejects, 413 for a request over the server's limits) raises at
once. Returned scores are validated like any PRM's: a result is never filled in.

The bearer token is read from the environment variable `token_env` (never from a config file);
by default `PRPO_PRM_TOKEN` is used when it is set.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import httpx

from prpo.prm.base import PRMError, check_inputs, register_prm, validate_scores

DEFAULT_TOKEN_ENV = "PRPO_PRM_TOKEN"


def token_from_env(token_env: str | None) -> str | None:
    """The token in `$token_env`; with no name, `$PRPO_PRM_TOKEN` if set. A named but unset variable is an error."""
    if token_env is None:
        return os.environ.get(DEFAULT_TOKEN_ENV) or None
    token = os.environ.get(token_env)
    if not token:
        raise PRMError(f"the PRM token variable {token_env} is not set (or empty)")
    return token


@register_prm("remote")
class RemotePRM:
    """PRM client over HTTP, with timeouts, retries and validated results."""

    @dataclass(frozen=True)
    class Config:
        url: str = "http://127.0.0.1:8765"
        token_env: str | None = None
        timeout: float = 120.0
        retries: int = 3
        backoff: float = 0.5
        max_batch_responses: int = 256

        def __post_init__(self) -> None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url = {self.url!r} must start with http:// or https://")
            if self.timeout <= 0 or self.retries < 0 or self.backoff < 0 or self.max_batch_responses < 1:
                raise ValueError("timeout and max_batch_responses must be positive, retries and backoff >= 0")

    def __init__(self, config: Config | None = None):
        self.config = config or self.Config()
        self.endpoint = self.config.url.rstrip("/") + "/score"
        token = token_from_env(self.config.token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=self.config.timeout, headers=headers)

    @property
    def prm_id(self) -> str:
        return f"remote({self.config.url.rstrip('/')})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemotePRM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def score(self, problems: list[str], segments: list[list[str]]) -> list[list[float]]:
        check_inputs(problems, segments)
        step = self.config.max_batch_responses
        scores: list = []
        for start in range(0, len(segments), step):
            chunk = self._post(problems[start : start + step], [list(s) for s in segments[start : start + step]])
            if not isinstance(chunk, list) or len(chunk) != len(segments[start : start + step]):
                count = len(chunk) if isinstance(chunk, list) else type(chunk).__name__
                raise PRMError(f"PRM server {self.endpoint} returned {count} score rows for "
                               f"{len(segments[start : start + step])} responses")
            scores.extend(chunk)
        return validate_scores(scores, segments)

    def _post(self, problems: list[str], segments: list[list[str]]) -> object:
        cfg = self.config
        last_error = ""
        for attempt in range(cfg.retries + 1):
            if attempt:
                time.sleep(cfg.backoff * 2 ** (attempt - 1))
            try:
                response = self._client.post(self.endpoint, json={"problems": problems, "segments": segments})
            except httpx.TimeoutException as err:
                last_error = f"no answer within {cfg.timeout} s ({type(err).__name__})"
                continue
            except httpx.TransportError as err:
                last_error = f"{type(err).__name__}: {err}"
                continue
            if response.status_code >= 500:
                last_error = f"HTTP {response.status_code}: {_detail(response)}"
                continue
            if response.status_code != 200:
                raise PRMError(f"PRM server {self.endpoint} refused the request: "
                               f"HTTP {response.status_code}: {_detail(response)}")
            try:
                return response.json()["scores"]
            except (ValueError, KeyError, TypeError) as err:
                raise PRMError(f"PRM server {self.endpoint} sent a malformed answer ({err!r}): "
                               f"{response.text[:200]!r}") from err
        raise PRMError(f"PRM server {self.endpoint} failed after {cfg.retries + 1} attempts: {last_error}")


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
