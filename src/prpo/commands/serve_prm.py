"""`prpo serve-prm --prm CONFIG`: serve a process reward model over HTTP.

CONFIG is a PRM name (`arithmetic`), a YAML/JSON file (`configs/prm/qwen2.5-math-prm-7b.yaml`)
or an inline JSON mapping. Clients use `{"type": "remote", "url": "http://HOST:PORT"}`.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import sys

from prpo.prm import PRMError, load_prm
from prpo.prm.remote import DEFAULT_TOKEN_ENV, token_from_env
from prpo.prm.server import MAX_REQUEST_BYTES, MAX_RESPONSES, MAX_SEGMENTS, create_app, serve


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="prpo serve-prm", description=__doc__.splitlines()[0])
    parser.add_argument("--prm", required=True, help="PRM name, YAML/JSON config file, or inline JSON mapping")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--token-env", default=None,
                        help=f"environment variable holding the bearer token clients must send "
                             f"(default: {DEFAULT_TOKEN_ENV} if set, else no token)")
    parser.add_argument("--batch-window", type=float, default=0.01,
                        help="seconds to gather concurrent requests into one model call")
    parser.add_argument("--max-batch-responses", type=int, default=256)
    parser.add_argument("--max-request-bytes", type=int, default=MAX_REQUEST_BYTES,
                        help=f"largest request body accepted, else HTTP 413 (default: {MAX_REQUEST_BYTES})")
    parser.add_argument("--max-responses", type=int, default=MAX_RESPONSES,
                        help=f"most responses in one request, else HTTP 413 (default: {MAX_RESPONSES})")
    parser.add_argument("--max-segments", type=int, default=MAX_SEGMENTS,
                        help=f"most segments in one response, else HTTP 413 (default: {MAX_SEGMENTS})")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        spec = json.loads(args.prm) if args.prm.lstrip().startswith("{") else args.prm
        token = token_from_env(args.token_env)
        prm = load_prm(spec)
    except json.JSONDecodeError as err:
        print(f"prpo serve-prm: --prm is not valid JSON: {err}", file=sys.stderr)
        return 2
    except PRMError as err:
        print(f"prpo serve-prm: {err}", file=sys.stderr)
        return 2
    if token is None and not _is_loopback(args.host):
        logging.warning("serving on %s without a token: anyone who can reach this port can use the PRM", args.host)
    logging.info("serving %s on http://%s:%d", prm.prm_id, args.host, args.port)
    try:
        app = create_app(prm, token, args.batch_window, args.max_batch_responses,
                         args.max_request_bytes, args.max_responses, args.max_segments)
    except ValueError as err:
        print(f"prpo serve-prm: {err}", file=sys.stderr)
        return 2
    serve(app, args.host, args.port, args.log_level)
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
