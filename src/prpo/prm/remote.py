"""Client of a PRM served over HTTP by `prpo serve-prm` (see `prpo.prm.server` for the API).

Big batches are split into requests of at most `max_batch_responses` responses. What can heal is
waited out: a refused or reset connection, a timeout, a 5xx answer (the PRM crashed, is restarting
or returned invalid scores such as NaN) and 429 are retried with capped exponential backoff and
jitter (a wait of `uniform(0.5, 1) * min(max_backoff, backoff * 2**k)` seconds) for up to
`max_outage_seconds`, logging once when the outage starts and once when it ends; the request being
scored is kept, so nothing is re-sampled. Past that, `PRMOutage` names the endpoint and how long it
waited. What cannot heal (400, 401, 403, 404, 413, 422 and any other 4xx: a bad token, an input the
PRM rejects, a request over the server's limits) fails at once, naming the cause. Returned scores
are validated like any PRM's: a result is never filled in.

The bearer token is read from the environment variable `token_env` (never from a config file);
by default `PRPO_PRM_TOKEN` is used when it is set.
"""

from __future__ import annotations

import logging
import os
import random
import time
from dataclasses import dataclass

import httpx

from prpo.prm.base import PRMError, PRMOutage, check_inputs, register_prm, validate_scores

DEFAULT_TOKEN_ENV = "PRPO_PRM_TOKEN"
RETRIED_STATUS = frozenset({408, 429})  # and every 5xx: answers that can heal by waiting
logger = logging.getLogger(__name__)


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
        timeout: float = 120.0  # seconds for one request
        max_outage_seconds: float = 600.0  # how long a PRM that is down or restarting is waited out
        backoff: float = 0.5  # first wait between attempts, doubled each time ...
        max_backoff: float = 30.0  # ... up to this
        max_batch_responses: int = 256

        def __post_init__(self) -> None:
            if not self.url.startswith(("http://", "https://")):
                raise ValueError(f"url = {self.url!r} must start with http:// or https://")
            if self.timeout <= 0 or self.max_batch_responses < 1:
                raise ValueError("timeout and max_batch_responses must be positive")
            if self.max_outage_seconds < 0 or self.backoff < 0 or self.max_backoff < self.backoff:
                raise ValueError("max_outage_seconds and backoff must be >= 0, max_backoff >= backoff")

    def __init__(self, config: Config | None = None):
        self.config = config or self.Config()
        self.endpoint = self.config.url.rstrip("/") + "/score"
        token = token_from_env(self.config.token_env)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.Client(timeout=self.config.timeout, headers=headers)
        self._jitter = random.Random()  # its own generator: waiting never moves the training's random streams

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
        """One request's scores, waiting out what can heal for up to ``max_outage_seconds``."""
        cfg = self.config
        start, attempts, last_error = time.monotonic(), 0, ""
        while True:
            attempts += 1
            try:
                response = self._client.post(self.endpoint, json={"problems": problems, "segments": segments})
            except httpx.TimeoutException as err:
                last_error = f"no answer within {cfg.timeout} s ({type(err).__name__})"
            except httpx.TransportError as err:
                last_error = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    if attempts > 1:
                        logger.warning("PRM server %s answered again after %.1f s (%d attempts)", self.endpoint,
                                       time.monotonic() - start, attempts)
                    try:
                        return response.json()["scores"]
                    except (ValueError, KeyError, TypeError) as err:
                        raise PRMError(f"PRM server {self.endpoint} sent a malformed answer ({err!r}): "
                                       f"{response.text[:200]!r}") from err
                last_error = f"HTTP {response.status_code}: {_detail(response)}"
                if response.status_code < 500 and response.status_code not in RETRIED_STATUS:
                    raise PRMError(f"PRM server {self.endpoint} refused the request: {last_error}")
            waited = time.monotonic() - start
            if waited >= cfg.max_outage_seconds:
                raise PRMOutage(self.endpoint, waited, attempts, last_error)
            if attempts == 1:
                logger.warning("PRM server %s is unavailable (%s): waiting up to %.0f s for it", self.endpoint,
                               last_error, cfg.max_outage_seconds)
            pause = self._jitter.uniform(0.5, 1.0) * min(cfg.max_backoff, cfg.backoff * 2 ** (attempts - 1))
            time.sleep(min(pause, cfg.max_outage_seconds - waited))


def _detail(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]
