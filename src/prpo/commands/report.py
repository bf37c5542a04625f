"""`prpo report RUN_DIR`: rebuild a run's curves (PNG) and its HTML credit-assignment page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="prpo report", description=__doc__)
    parser.add_argument("run_dir", type=Path, help="a run directory written by `prpo train`")
    parser.add_argument("--samples-per-step", type=int, default=4, help="responses shown per step")
    args = parser.parse_args(argv)
    from prpo.training.report import build_report

    try:
        path = build_report(args.run_dir, samples_per_step=args.samples_per_step)
    except (FileNotFoundError, ValueError) as err:
        print(f"prpo report: {err}", file=sys.stderr)
        return 1
    print(f"report: {path}\ncurves: {path.parent / 'curves.png'}")
    return 0
