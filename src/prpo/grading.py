"""Answer extraction and math-verify grading that can never hang the caller.

math-verify (sympy underneath) can run for minutes or forever on adversarial LaTeX (e.g.
`9^{9^{9^{9^{9}}}}` is evaluated in C and ignores signals), and its own timeout uses
`signal.alarm`, which only works in the main thread. So every comparison runs in a small pool
of grading processes (plain `python -c` subprocesses fed JSON lines, so nothing re-imports the
caller's __main__): a job that exceeds its timeout gets its process killed (and replaced lazily),
grades False, and is counted. The pool is shared by all threads of a process; each call borrows
idle workers, so `is_correct` is safe from threads and from worker processes.
"""

from __future__ import annotations

import atexit
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path

__all__ = ["extract_boxed", "extract_final_answer", "grading_stats", "is_correct", "is_correct_many"]

MAX_WORKERS = min(4, os.cpu_count() or 1)
STARTUP_TIMEOUT = 120.0  # seconds a fresh grading process may take to import math-verify

_BOX_START = re.compile(r"\\(boxed|fbox)(?![A-Za-z])")
_ANSWER_LINE = re.compile(r"\b(?:final\s+)?answer\s*(?:is\b\s*:?|:)[ \t]*([^\n]*)", re.IGNORECASE)
_READY = "ready"
_SRC_DIR = str(Path(__file__).resolve().parents[1])  # so the grading processes import this prpo

# ----------------------------------------------------------------------------------------------
# extraction


def extract_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` / `\\fbox{...}` (any brace depth) or `\\boxed 5`.

    Escaped braces (`\\{`, `\\}`) do not count for nesting. Returns None when there is no box,
    or when the last box is unbalanced (a truncated response) or empty.
    """
    starts = list(_BOX_START.finditer(text))
    if not starts:
        return None
    last = starts[-1]
    pos = last.end()
    while pos < len(text) and text[pos] in " \t":
        pos += 1
    if pos < len(text) and text[pos] == "{":
        depth, i = 0, pos
        while i < len(text):
            char = text[i]
            if char == "\\":
                i += 2
                continue
            if char == "{":
                depth += 1
            elif char == "}":
                depth -= 1
                if depth == 0:
                    content = text[pos + 1 : i].strip()
                    return content or None
            i += 1
        return None
    if last.group(1) == "boxed" and pos > last.end():
        token = re.match(r"[^\s$]+", text[pos:])
        return token.group(0) if token else None
    return None


def extract_final_answer(text: str) -> str | None:
    """The boxed answer, else the last `Answer: X` / `The (final) answer is X` line, cleaned.

    Cleaning strips markdown bold, surrounding `$`, and a trailing period.
    """
    boxed = extract_boxed(text)
    if boxed is not None:
        return boxed
    matches = list(_ANSWER_LINE.finditer(text))
    if not matches:
        return None
    answer = matches[-1].group(1).strip().strip("*").strip()
    answer = answer.rstrip(".").strip()
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return answer or None


# ----------------------------------------------------------------------------------------------
# the grading processes


def _as_boxed(answer: str) -> str:
    """Wrap a bare answer (`\\frac{1}{2}`, `$(1,2)$`) as `\\boxed{...}` for math-verify."""
    answer = answer.strip()
    if "\\boxed" in answer:
        return answer
    if len(answer) >= 2 and answer.startswith("$") and answer.endswith("$"):
        answer = answer.strip("$").strip()
    return "\\boxed{" + answer + "}"


def _grade(answer: str, gold: str) -> str:
    """One math-verify comparison (runs inside a grading process)."""
    from math_verify import parse, verify

    try:
        gold_parsed = parse(_as_boxed(gold), parsing_timeout=None)
        answer_parsed = parse(_as_boxed(answer), parsing_timeout=None)
        if not gold_parsed:
            return "error"  # a gold answer math-verify cannot read is a data problem
        if not answer_parsed:
            return "unparsed"
        return "correct" if verify(gold_parsed, answer_parsed, timeout_seconds=None) else "wrong"
    except Exception:
        return "error"


def _serve() -> None:
    """Grading process main loop: JSON `[answer, gold]` lines on stdin, one outcome line each."""
    import logging

    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # stray prints from libraries go to stderr, never into the protocol
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)  # no "timeout disabled" warnings
    import math_verify  # noqa: F401  (import before announcing readiness)

    out.write(_READY.encode() + b"\n")
    for line in sys.stdin.buffer:
        answer, gold = json.loads(line)
        out.write(_grade(answer, gold).encode() + b"\n")


class _Worker:
    """One grading process and the parent's ends of its stdin/stdout pipes."""

    def __init__(self) -> None:
        pythonpath = [_SRC_DIR] + [p for p in [os.environ.get("PYTHONPATH")] if p]
        self.process = subprocess.Popen(
            [sys.executable, "-c", "from prpo.grading import _serve; _serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath)},
        )
        self.buffer = b""
        message, deadline = None, time.monotonic() + STARTUP_TIMEOUT
        try:
            while message is None and wait([self], max(0.0, deadline - time.monotonic())):
                message = self.read()
        except EOFError:
            pass
        if message != _READY:
            self.kill()
            raise RuntimeError(
                f"grading process did not start within {STARTUP_TIMEOUT:.0f} s "
                f"(exit code {self.process.returncode}); is math-verify installed for {sys.executable}?"
            )

    def fileno(self) -> int:
        return self.process.stdout.fileno()

    def send(self, answer: str, gold: str) -> None:
        view = memoryview(json.dumps([answer, gold]).encode() + b"\n")
        while view:
            view = view[os.write(self.process.stdin.fileno(), view) :]

    def read(self) -> str | None:
        """The next message, or None while only part of it has arrived; EOFError if the process died."""
        if b"\n" not in self.buffer:
            data = os.read(self.fileno(), 65536)
            if not data:
                raise EOFError("grading process exited")
            self.buffer += data
        if b"\n" not in self.buffer:
            return None
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()
        self.process.stdout.close()


class _Pool:
    """Up to `size` grading processes shared by all threads; a caller borrows idle ones."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.idle: list[_Worker] = []
        self.live = 0
        self.cond = threading.Condition()

    def acquire(self, block: bool) -> _Worker | None:
        """An idle worker, a new one if under `size`, else wait (block) or None."""
        with self.cond:
            while not self.idle and self.live >= self.size:
                if not block:
                    return None
                self.cond.wait()
            if self.idle:
                return self.idle.pop()
            self.live += 1
        try:
            return _Worker()
        except BaseException:
            with self.cond:
                self.live -= 1
                self.cond.notify()
            raise

    def release(self, worker: _Worker) -> None:
        with self.cond:
            self.idle.append(worker)
            self.cond.notify()

    def discard(self, worker: _Worker) -> None:
        worker.kill()
        with self.cond:
            self.live -= 1
            self.cond.notify()

    def shutdown(self) -> None:
        """Kill the idle workers (at interpreter exit)."""
        with self.cond:
            idle, self.idle = self.idle, []
            self.live -= len(idle)
        for worker in idle:
            worker.kill()


_POOL = _Pool(MAX_WORKERS)
atexit.register(lambda: _POOL.shutdown())


def _forget_pool_after_fork() -> None:
    """A forked child must not share its parent's pipes: it starts its own workers."""
    global _POOL
    _POOL = _Pool(MAX_WORKERS)


os.register_at_fork(after_in_child=_forget_pool_after_fork)


def _run(jobs: list[tuple[str, str]], timeout: float) -> list[str]:
    """Outcome per job: correct / wrong / unparsed / error / timeout.

    Each job gets `timeout` seconds from when it is handed to a ready worker; a late job's
    process is killed and the job answers "timeout".
    """
    pool = _POOL
    outcomes: list[str] = [""] * len(jobs)
    queue = deque(range(len(jobs)))
    busy: dict[_Worker, tuple[int, float]] = {}  # worker -> job index, deadline
    try:
        while queue or busy:
            while queue:
                worker = pool.acquire(block=not busy)
                if worker is None:
                    break
                index = queue.popleft()
                try:
                    worker.send(*jobs[index])
                except OSError:  # the process died while idle
                    outcomes[index] = "error"
                    pool.discard(worker)
                    continue
                busy[worker] = (index, time.monotonic() + timeout)
            if not busy:
                continue
            next_deadline = min(deadline for _, deadline in busy.values())
            for worker in wait(list(busy), timeout=max(0.0, next_deadline - time.monotonic())):
                index, _ = busy[worker]
                try:
                    message = worker.read()
                except (EOFError, OSError):  # the process died (e.g. out of memory)
                    del busy[worker]
                    outcomes[index] = "error"
                    pool.discard(worker)
                    continue
                if message is not None:
                    del busy[worker]
                    outcomes[index] = message
                    pool.release(worker)
            now = time.monotonic()
            for worker, (index, deadline) in list(busy.items()):
                if deadline <= now:
                    del busy[worker]
                    outcomes[index] = "timeout"
                    pool.discard(worker)
    finally:
        for worker in busy:  # interrupted: their state is unknown
            pool.discard(worker)
    return outcomes


# ----------------------------------------------------------------------------------------------
# public grading API

_STATS = {"graded": 0, "correct": 0, "unparsed": 0, "timeouts": 0, "errors": 0}
_STATS_LOCK = threading.Lock()


def grading_stats() -> dict[str, int]:
    """Process-wide counters since import: graded, correct, unparsed, timeouts, errors.

    `unparsed`: no final answer in the response, or math-verify could not read it.
    `errors`: math-verify raised, a gold answer was unreadable, or a grading process died.
    """
    with _STATS_LOCK:
        return dict(_STATS)


def is_correct_many(responses: list[str], golds: list[str], *, timeout: float = 5.0) -> list[bool]:
    """Grade each response's final answer against its gold answer with math-verify.

    The final answer is `extract_final_answer(response)`; gold may be bare LaTeX (`\\frac{1}{2}`,
    `(1,2)`, `18`). Work is spread over the grading processes; a comparison that takes longer
    than `timeout` seconds is killed and graded False.
    """
    if len(responses) != len(golds):
        raise ValueError(f"is_correct_many: {len(responses)} responses but {len(golds)} gold answers")
    for i, (response, gold) in enumerate(zip(responses, golds)):
        if not isinstance(response, str) or not isinstance(gold, str):
            raise TypeError(
                f"is_correct_many: item {i}: response and gold must be str, "
                f"got {type(response).__name__} and {type(gold).__name__}"
            )
    if timeout <= 0:
        raise ValueError(f"is_correct_many: timeout must be positive, got {timeout}")
    answers = [extract_final_answer(response) for response in responses]
    todo = [i for i, answer in enumerate(answers) if answer is not None]
    outcomes = ["unparsed"] * len(responses)
    for i, outcome in zip(todo, _run([(answers[i], golds[i]) for i in todo], timeout)):
        outcomes[i] = outcome
    with _STATS_LOCK:
        _STATS["graded"] += len(outcomes)
        _STATS["correct"] += outcomes.count("correct")
        _STATS["unparsed"] += outcomes.count("unparsed")
        _STATS["timeouts"] += outcomes.count("timeout")
        _STATS["errors"] += outcomes.count("error")
    return [outcome == "correct" for outcome in outcomes]


def is_correct(response: str, gold: str, *, timeout: float = 5.0) -> bool:
    """True when the response's final answer equals `gold` per math-verify (see is_correct_many)."""
    return is_correct_many([response], [gold], timeout=timeout)[0]
