"""Benchmark rows from a local JSON / JSONL file or a Hugging Face dataset, each with its location.

A location (`data/gsm8k_test.jsonl line 17`, `openai/gsm8k (test) row 17`) goes into every error
about that row, so a bad row is found by reading the message.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prpo.tasks.base import Example

Row = dict[str, Any]
Located = list[tuple[str, Row]]  # (location, row)

_BETWEEN_ITEMS = re.compile(r"[\s,]*")


class RowError(ValueError):
    """A problem with one row; the reader adds the row's location."""


class HubUnavailable(ConnectionError):
    """A hub dataset that is not in the local cache while the hub cannot be reached (offline)."""

    def __init__(self, dataset_id: str, split: str, reason: str):
        self.dataset_id, self.split = dataset_id, split
        super().__init__(
            f"hub dataset {dataset_id!r} (split {split}) is not in the local cache and the hub cannot be "
            f"reached ({reason}): run once online to cache it, or use local files (data_file, or data_dir / "
            "$PRPO_DATA_DIR holding the benchmark's file)"
        )


@dataclass(frozen=True)
class Source:
    """Where a split of a benchmark lives by default: a file name and a hub dataset split."""

    file: str
    dataset_id: str
    hub_split: str
    config: str | None = None


def read_rows(
    *,
    data_file: str | Path | None,
    dataset_id: str | None,
    split: str | None,
    sources: dict[str, Source],
    default_split: str,
    data_dir: str | Path | None = None,
) -> Located:
    """Rows of `data_file`; else of hub `dataset_id`; else, for `sources[split]`, of
    `<data_dir>/<file>`, else of `$PRPO_DATA_DIR/<file>` when it exists, else of its hub split.

    A local file is one split already (`split` is not used). With `dataset_id`, `split` is the
    hub's split name (default: the default source's hub split).
    """
    if data_file is not None and dataset_id is not None:
        raise ValueError(f"give data_file ({data_file}) or dataset_id ({dataset_id}), not both")
    if data_file is not None:
        return read_file(Path(data_file))
    key = split or default_split
    source = sources.get(key)
    if dataset_id is not None:
        default = source or sources[default_split]
        config = default.config if dataset_id == default.dataset_id else None
        return read_hub(dataset_id, config, split or default.hub_split)
    if source is None:
        raise ValueError(f"no default data for split {key!r} (known: {sorted(sources)}); give data_file or dataset_id")
    if data_dir is not None:
        return read_file(Path(data_dir) / source.file)
    folder = os.environ.get("PRPO_DATA_DIR")
    if folder and (Path(folder) / source.file).is_file():
        return read_file(Path(folder) / source.file)
    return read_hub(source.dataset_id, source.config, source.hub_split)


def read_file(path: Path) -> Located:
    """Rows of a `.jsonl` file (one object per line) or a `.json` file (a list of objects)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such data file")
    if path.suffix == ".jsonl":
        rows = _jsonl_rows(path)
    elif path.suffix == ".json":
        rows = _json_list_rows(path)
    else:
        raise ValueError(f"{path}: unsupported data file type {path.suffix!r}; use .jsonl or .json")
    if not rows:
        raise ValueError(f"{path}: the file has no rows")
    for where, row in rows:
        if not isinstance(row, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    return rows


def _jsonl_rows(path: Path) -> Located:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rows.append((f"{path} line {number}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path} line {number}: invalid JSON: {err.msg} (column {err.colno})") from None
    return rows


def _json_list_rows(path: Path) -> Located:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} line {err.lineno}: invalid JSON: {err.msg} (column {err.colno})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of objects, got a JSON {type(data).__name__}")
    # Walk the list once more to find the line each item starts on.
    decoder, rows = json.JSONDecoder(), []
    pos, line = text.index("[") + 1, 1 + text.count("\n", 0, text.index("["))
    for item in data:
        start = _BETWEEN_ITEMS.match(text, pos).end()
        line += text.count("\n", pos, start)
        rows.append((f"{path} line {line}", item))
        _, end = decoder.raw_decode(text, start)
        line += text.count("\n", start, end)
        pos = end
    return rows


def read_hub(dataset_id: str, config: str | None, split: str) -> Located:
    """Rows of a Hugging Face dataset split (downloaded by `datasets.load_dataset`); HubUnavailable offline."""
    from datasets import load_dataset

    try:
        data = load_dataset(dataset_id, config, split=split)
    except ConnectionError as err:
        raise HubUnavailable(dataset_id, split, str(err)) from err
    rows = [(f"{dataset_id} ({split}) row {number}", dict(row)) for number, row in enumerate(data, start=1)]
    if not rows:
        raise ValueError(f"{dataset_id} ({split}): the dataset has no rows")
    return rows


def to_examples(rows: Located, convert: Callable[[Row, int], Example], *, skip_bad_rows: bool = False) -> list[Example]:
    """`convert(row, index)` on every row; a `RowError` or a duplicate id names the row's location.

    With `skip_bad_rows`, rows failing `convert` are dropped with one warning that counts them.
    """
    examples, first_seen, skipped = [], {}, []
    for index, (where, row) in enumerate(rows):
        try:
            example = convert(row, index)
        except RowError as err:
            if not skip_bad_rows:
                raise ValueError(f"{where}: {err} (skip_bad_rows=True drops such rows)") from None
            skipped.append(f"{where}: {err}")
            continue
        if example.id in first_seen:
            raise ValueError(f"{where}: duplicate id {example.id!r} (first at {first_seen[example.id]})")
        first_seen[example.id] = where
        examples.append(example)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} bad row(s) of {len(rows)}: " + "; ".join(skipped[:3]), stacklevel=2)
    if not examples:
        raise ValueError(f"all {len(rows)} rows are bad, first: {skipped[0]}")
    return examples


def text_field(row: Row, *names: str) -> str:
    """The first of `names` present in the row, as a non-empty string."""
    for name in names:
        if name in row and row[name] is not None:
            value = row[name]
            if not isinstance(value, str) or not value.strip():
                raise RowError(f"field {name!r} must be a non-empty string, got {value!r}")
            return value
    raise RowError(f"missing field {names[0]!r}" + "".join(f" (or {n!r})" for n in names[1:]))


def answer_text(value: Any, name: str) -> str:
    """A gold answer as a string: `4.0` -> `"4"`, `"025"` -> `"25"`, LaTeX kept as written."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"field {name!r} must be a string or a number, got {value!r}")
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise RowError(f"field {name!r} must be a finite number, got {value!r}")
        return str(int(value)) if value.is_integer() else repr(value)
    text = str(value).strip()
    if not text:
        raise RowError(f"field {name!r} is empty")
    if re.fullmatch(r"-?\d+(\.0+)?", text):
        return str(int(text.split(".")[0]))
    return text
