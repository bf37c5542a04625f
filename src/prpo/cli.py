"""`prpo` command line: dispatches `prpo <command> ...` to `prpo.commands.<command>.main(argv)`."""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("prpo.commands.train", "train a policy with PRPO or a baseline (default: the offline quickstart)"),
    "eval": ("prpo.commands.eval", "evaluate a model on MATH500, GSM8K, AIME24, AMC23 or arithmetic"),
    "serve-prm": ("prpo.commands.serve_prm", "serve a process reward model over HTTP"),
    "report": ("prpo.commands.report", "rebuild the plots and HTML report of a run directory"),
    "bench": ("prpo.commands.bench", "controlled benchmark of the advantage methods"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: prpo <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run `prpo <command> --help` for the options of one command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"prpo: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name = COMMANDS[name][0]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"prpo: command {name!r} is not available in this version", file=sys.stderr)
        return 2
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
