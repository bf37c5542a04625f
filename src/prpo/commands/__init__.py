"""Subcommands of the `prpo` CLI: each module exposes `main(argv: list[str]) -> int`."""
