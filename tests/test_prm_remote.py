"""PRM server and client over 127.0.0.1: real uvicorn servers, including deliberately faulty ones."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from prpo.commands import serve_prm
from prpo.prm import ArithmeticPRM, PRMError, RemotePRM, load_prm
from prpo.prm.base import PRMOutage
from prpo.prm.server import background_server, create_app

PROBLEM = "Tom has 3 boxes with 4 apples each. He eats 2 apples. How many apples are left?"
RIGHT = ["3 * 4 = 12\n", "12 - 2 = 10\n", "Answer: 10"]
WRONG = ["3 * 4 = 12\n", "12 - 2 = 11\n", "Answer: 11"]
EXPECTED = ArithmeticPRM().score([PROBLEM] * 2, [RIGHT, WRONG])


def client(url, **options) -> RemotePRM:
    return load_prm({"type": "remote", "url": url, "backoff": 0.01, **options})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RecordingPRM(ArithmeticPRM):
    def __init__(self):
        super().__init__()
        self.calls: list[int] = []

    def score(self, problems, segments):
        self.calls.append(len(segments))
        return super().score(problems, segments)


def scripted_server(plan):
    """A faulty /score endpoint: the k-th request gets plan[k] (status, body or "slow"), then success."""
    seen = []

    async def score(request):
        seen.append(await request.json())
        step = plan[len(seen) - 1] if len(seen) <= len(plan) else "ok"
        if step == "slow":
            await asyncio.sleep(1.0)
            step = "ok"
        if step == "ok":
            return JSONResponse({"scores": EXPECTED})
        status, body = step
        return PlainTextResponse(body, status_code=status) if isinstance(body, str) else JSONResponse(body, status_code=status)

    return Starlette(routes=[Route("/score", score, methods=["POST"])]), seen


def test_round_trip_with_batches_split_by_the_client():
    prm = RecordingPRM()
    with background_server(create_app(prm)) as url:
        remote = client(url, max_batch_responses=1)
        assert remote.score([PROBLEM] * 2, [RIGHT, WRONG]) == EXPECTED
        assert remote.score([], []) == []
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "prm_id": prm.prm_id}
    assert prm.calls == [1, 1]
    assert remote.prm_id == f"remote({url})"


def test_concurrent_requests_are_batched_into_fewer_model_calls():
    prm = RecordingPRM()
    with background_server(create_app(prm, batch_window=0.5)) as url:
        start = threading.Barrier(8)
        results = [None] * 8

        def send(k):
            remote = client(url)
            start.wait()
            results[k] = remote.score([PROBLEM], [RIGHT if k % 2 else WRONG])

        threads = [threading.Thread(target=send, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results == [[EXPECTED[1]], [EXPECTED[0]]] * 4  # each caller gets its own scores back
    assert sum(prm.calls) == 8 and len(prm.calls) < 8


def test_server_down_is_waited_out_for_max_outage_seconds_then_named():
    url = f"http://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(PRMOutage, match=rf"PRM server {url}/score did not answer for 0\.[3-9]\d* s \(\d+ attempts, "
                                        r"max_outage_seconds reached\): ConnectError") as info:
        client(url, max_outage_seconds=0.3).score([PROBLEM], [RIGHT])
    assert 0.3 <= info.value.waited <= time.monotonic() - start and info.value.attempts >= 3
    assert info.value.url == f"{url}/score"


def test_a_restarting_server_is_waited_out_and_the_same_request_answered(caplog):
    """The server is down for about 1.5 s, then starts on the same port: one outage logged, one recovery."""
    port = free_port()
    app, seen = scripted_server([])

    def restart_later():
        time.sleep(1.5)
        with background_server(app, port=port):
            while not done.is_set():
                time.sleep(0.05)

    done = threading.Event()
    thread = threading.Thread(target=restart_later)
    thread.start()
    try:
        with caplog.at_level("WARNING", logger="prpo.prm.remote"):
            scores = client(f"http://127.0.0.1:{port}", max_outage_seconds=30).score([PROBLEM] * 2, [RIGHT, WRONG])
    finally:
        done.set()
        thread.join()
    assert scores == EXPECTED and seen == [{"problems": [PROBLEM] * 2, "segments": [RIGHT, WRONG]}]
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2 and "is unavailable (ConnectError" in messages[0] and "waiting up to 30 s" in messages[0]
    assert "answered again after" in messages[1]


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
def test_what_cannot_heal_fails_at_once_naming_the_cause(status):
    app, seen = scripted_server([(status, {"error": f"cause {status}"})])
    with background_server(app) as url:
        start = time.monotonic()
        with pytest.raises(PRMError, match=rf"refused the request: HTTP {status}: cause {status}"):
            client(url, max_outage_seconds=30).score([PROBLEM], [RIGHT])
        assert len(seen) == 1 and time.monotonic() - start < 5


@pytest.mark.parametrize("status", [429, 408, 500, 502, 503])
def test_what_can_heal_is_retried(status):
    app, seen = scripted_server([(status, {"error": "later"})] * 2)
    with background_server(app) as url:
        assert client(url, max_outage_seconds=30).score([PROBLEM] * 2, [RIGHT, WRONG]) == EXPECTED
    assert len(seen) == 3


def test_waiting_leaves_the_training_random_streams_alone():
    import random

    import torch

    app, _ = scripted_server([(503, "busy")] * 3)
    before = random.getstate(), torch.get_rng_state()
    with background_server(app) as url:
        client(url, max_outage_seconds=30).score([PROBLEM] * 2, [RIGHT, WRONG])
    assert random.getstate() == before[0] and torch.equal(torch.get_rng_state(), before[1])


def test_slow_server_times_out_then_succeeds_on_retry_or_fails_clearly():
    app, seen = scripted_server(["slow", "slow"])
    with background_server(app) as url:
        assert client(url, timeout=0.2, max_outage_seconds=30).score([PROBLEM] * 2, [RIGHT, WRONG]) == EXPECTED
        assert len(seen) == 3
    app, seen = scripted_server(["slow"] * 3)
    with background_server(app) as url:
        with pytest.raises(PRMOutage, match=r"max_outage_seconds reached\): no answer within 0.2 s \(ReadTimeout\)"):
            client(url, timeout=0.2, max_outage_seconds=0.1).score([PROBLEM] * 2, [RIGHT, WRONG])


def test_5xx_answers_are_retried_until_success():
    app, seen = scripted_server([(500, {"error": "CUDA out of memory"}), (503, "busy")])
    with background_server(app) as url:
        assert client(url, max_outage_seconds=30).score([PROBLEM] * 2, [RIGHT, WRONG]) == EXPECTED
        assert len(seen) == 3 and seen[0] == seen[2] == {"problems": [PROBLEM] * 2, "segments": [RIGHT, WRONG]}
    app, seen = scripted_server([(500, {"error": "CUDA out of memory"})] * 1000)
    with background_server(app) as url:
        with pytest.raises(PRMOutage, match="max_outage_seconds reached\\): HTTP 500: CUDA out of memory"):
            client(url, max_outage_seconds=0.05).score([PROBLEM] * 2, [RIGHT, WRONG])


def test_wrong_or_missing_token_is_a_401_not_retried(monkeypatch):
    with background_server(create_app(ArithmeticPRM(), token="s3cret")) as url:
        monkeypatch.setenv("PRM_TEST_TOKEN", "s3cret")
        assert client(url, token_env="PRM_TEST_TOKEN").score([PROBLEM] * 2, [RIGHT, WRONG]) == EXPECTED
        monkeypatch.setenv("PRM_TEST_TOKEN", "guess")
        with pytest.raises(PRMError, match="refused the request: HTTP 401: missing or wrong bearer token"):
            client(url, token_env="PRM_TEST_TOKEN").score([PROBLEM], [RIGHT])
        monkeypatch.delenv("PRPO_PRM_TOKEN", raising=False)
        with pytest.raises(PRMError, match="HTTP 401"):
            client(url).score([PROBLEM], [RIGHT])
        assert httpx.get(f"{url}/health").status_code == 401
    monkeypatch.delenv("PRM_TEST_TOKEN")
    with pytest.raises(PRMError, match="PRM token variable PRM_TEST_TOKEN is not set"):
        client(url, token_env="PRM_TEST_TOKEN")
    app, seen = scripted_server([(401, {"error": "no"})])
    with background_server(app) as url:
        with pytest.raises(PRMError, match="HTTP 401: no"):
            client(url, max_outage_seconds=30).score([PROBLEM], [RIGHT])
        assert len(seen) == 1


def test_malformed_requests_get_clear_4xx_answers():
    with background_server(create_app(ArithmeticPRM())) as url:
        bad_json = httpx.post(f"{url}/score", content=b"{not json")
        assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]
        wrong_keys = httpx.post(f"{url}/score", json={"problems": []})
        assert wrong_keys.status_code == 422 and "exactly the keys" in wrong_keys.json()["error"]
        mismatch = httpx.post(f"{url}/score", json={"problems": ["p"], "segments": [["a"], ["b"]]})
        assert mismatch.status_code == 422 and "1 problems for 2 responses" in mismatch.json()["error"]


@pytest.mark.parametrize(
    "answer, message",
    [
        ((200, "this is not json"), "malformed answer"),
        ((200, {"result": []}), "malformed answer"),
        ((200, {"scores": [[0.9, 0.9, 0.9]]}), "returned 1 score rows for 2 responses"),
        ((200, {"scores": [[0.9, 0.9, 0.9], [0.9, 0.1]]}), "returned 2 scores for response 1"),
        ((200, {"scores": [[0.9, 0.9, 0.9], [0.9, 0.1, 7.0]]}), "response 1, segment 2 is 7.0"),
    ],
)
def test_malformed_answers_are_errors_never_filled_in(answer, message):
    app, _ = scripted_server([answer])
    with background_server(app) as url:
        with pytest.raises(PRMError, match=message):
            client(url, max_outage_seconds=0).score([PROBLEM] * 2, [RIGHT, WRONG])


def test_a_failing_request_does_not_fail_the_others_in_its_batch():
    class FussyPRM(ArithmeticPRM):
        def score(self, problems, segments):
            if any(len(s) > 3 for s in segments):
                raise PRMError("a response has more than 3 segments")
            return super().score(problems, segments)

    with background_server(create_app(FussyPRM(), batch_window=0.5)) as url:
        results = {}

        def send(name, segments):
            try:
                results[name] = client(url, max_outage_seconds=0).score([PROBLEM], [segments])
            except PRMError as err:
                results[name] = str(err)

        threads = [threading.Thread(target=send, args=("good", RIGHT)),
                   threading.Thread(target=send, args=("bad", RIGHT + ["x"]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert results["good"] == [EXPECTED[0]]
    assert "HTTP 422: a response has more than 3 segments" in results["bad"]


def test_serve_prm_command_serves_until_stopped(tmp_path, monkeypatch):
    port = free_port()
    config = tmp_path / "prm.yaml"
    config.write_text("type: arithmetic\nright: 0.8\n")
    monkeypatch.setenv("PRPO_SERVE_TOKEN", "t0ken")
    process = subprocess.Popen(
        [sys.executable, "-m", "prpo.cli", "serve-prm", "--prm", str(config), "--port", str(port),
         "--token-env", "PRPO_SERVE_TOKEN", "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", headers={"Authorization": "Bearer t0ken"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "serve-prm did not start"
            time.sleep(0.2)
        remote = client(url, token_env="PRPO_SERVE_TOKEN")
        assert remote.score([PROBLEM], [RIGHT]) == [[0.8, 0.8, 0.8]]
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_prm_command_rejects_bad_configs(capsys, monkeypatch):
    assert serve_prm.main(["--prm", "nope"]) == 2
    assert "unknown PRM type 'nope'" in capsys.readouterr().err
    assert serve_prm.main(["--prm", '{"type": "arithmetic", "rigth": 1}']) == 2
    assert "unknown field 'rigth'" in capsys.readouterr().err
    assert serve_prm.main(["--prm", "{bad json"]) == 2
    assert "--prm is not valid JSON" in capsys.readouterr().err
    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    assert serve_prm.main(["--prm", "arithmetic", "--token-env", "NO_SUCH_TOKEN"]) == 2
    assert "NO_SUCH_TOKEN is not set" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# status codes for a PRM fault and for requests over the server's limits


def test_a_prm_returning_nan_is_a_500_and_the_client_retries_it():
    class NaNPRM(RecordingPRM):
        def score(self, problems, segments):
            scores = super().score(problems, segments)
            return [[float("nan")] + row[1:] for row in scores]

    prm = NaNPRM()
    with background_server(create_app(prm)) as url:
        answer = httpx.post(f"{url}/score", json={"problems": [PROBLEM], "segments": [RIGHT]})
        assert answer.status_code == 500  # the server's fault, not the request's
        assert answer.json()["error"].endswith("score of response 0, segment 0 is nan, expected a finite value in [0, 1]")
        with pytest.raises(PRMOutage, match=r"reached\): HTTP 500: .*invalid scores: .*segment 0 is nan") as info:
            client(url, max_outage_seconds=0.05).score([PROBLEM], [RIGHT])
    assert info.value.attempts >= 2 and prm.calls == [1] * (1 + info.value.attempts)  # one direct request, then the client's


def test_bodies_over_the_size_limit_get_413_declared_or_streamed():
    prm = RecordingPRM()
    with background_server(create_app(prm, max_request_bytes=2000)) as url:
        fits = {"problems": [PROBLEM], "segments": [RIGHT]}
        assert httpx.post(f"{url}/score", json=fits).json() == {"scores": [EXPECTED[0]]}
        big = {"problems": [PROBLEM] * 20, "segments": [RIGHT] * 20}  # 20 * ~130 bytes > 2000
        declared = httpx.post(f"{url}/score", json=big)
        assert declared.status_code == 413
        assert "over the server's limit of 2000 bytes" in declared.json()["error"]
        body = json.dumps(big).encode()
        streamed = httpx.post(f"{url}/score", content=(body[k : k + 100] for k in range(0, len(body), 100)))
        assert streamed.status_code == 413 and "--max-request-bytes" in streamed.json()["error"]
        with pytest.raises(PRMError, match="refused the request: HTTP 413: request body over the server's limit"):
            client(url, max_outage_seconds=30).score([PROBLEM] * 20, [RIGHT] * 20)
    assert prm.calls == [1]  # nothing over the limit reached the model


def test_the_default_size_limit_refuses_a_20_mb_body():
    with background_server(create_app(ArithmeticPRM())) as url:
        answer = httpx.post(f"{url}/score", content=b"[" + b" " * 20_000_000 + b"]", timeout=60)
    assert answer.status_code == 413 and f"limit of {16 * 2**20} bytes" in answer.json()["error"]


def test_too_many_responses_or_segments_get_413():
    prm = RecordingPRM()
    with background_server(create_app(prm, max_responses=3, max_segments=3)) as url:
        assert client(url).score([PROBLEM] * 3, [RIGHT, WRONG, RIGHT]) == EXPECTED + EXPECTED[:1]
        many = httpx.post(f"{url}/score", json={"problems": [PROBLEM] * 4, "segments": [RIGHT] * 4})
        assert many.status_code == 413
        assert many.json()["error"].startswith("the request holds 4 responses, over the server's limit of 3")
        long = httpx.post(f"{url}/score", json={"problems": [PROBLEM] * 2, "segments": [RIGHT, RIGHT + ["x"]]})
        assert long.status_code == 413
        assert long.json()["error"].startswith("response 1 has 4 segments, over the server's limit of 3")
        # The client's own chunking keeps requests under the response cap.
        assert client(url, max_batch_responses=3).score([PROBLEM] * 4, [RIGHT] * 4) == [EXPECTED[0]] * 4
        with pytest.raises(PRMError, match="HTTP 413: the request holds 4 responses"):
            client(url, max_outage_seconds=30).score([PROBLEM] * 4, [RIGHT] * 4)
        assert httpx.post(f"{url}/score", json={"problems": 1, "segments": []}).status_code == 422
    assert prm.calls == [3, 3, 1]


def test_limits_must_be_positive(capsys):
    with pytest.raises(ValueError, match="max_segments = 0 must be a positive integer"):
        create_app(ArithmeticPRM(), max_segments=0)
    assert serve_prm.main(["--prm", "arithmetic", "--max-request-bytes", "0"]) == 2
    assert "max_request_bytes = 0 must be a positive integer" in capsys.readouterr().err
