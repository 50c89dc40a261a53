"""Reading a run's metrics.jsonl: the one reader behind the run plots and the paper tables.

Each line is one JSON object with a ``type`` (config, train, eval, decay, final, error; see
alphadecay/training/logger.py). A resumed run appends to the same file, so for a repeated
(type, step) the last record wins; a line cut by a kill, or one that is not a record, is counted
and skipped rather than failing the whole file.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, field


@dataclass
class RunLog:
    path: str                                  # the metrics.jsonl file
    config: dict | None = None                 # the flags of the last (re)start; None without a config record
    model: dict = field(default_factory=dict)  # the model summary of the last config record that had one
    records: dict[str, list[dict]] = field(default_factory=dict)   # type -> records, one per step, by step
    bad_lines: int = 0

    @property
    def folder(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def last(self, kind: str) -> dict | None:
        found = self.records.get(kind)
        return found[-1] if found else None


def metrics_file(path: str) -> str:
    """``path`` itself, or ``path/metrics.jsonl`` for a run folder; FileNotFoundError when neither exists."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no metrics.jsonl at {path}")
    return path


def read_metrics(path: str) -> RunLog:
    """Parse a run folder's (or a file's) metrics.jsonl into a :class:`RunLog`."""
    log = RunLog(metrics_file(path))
    latest: dict[tuple[str, int], dict] = {}
    with open(log.path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)   # NaN / Infinity tokens are accepted
            except ValueError:
                log.bad_lines += 1
                continue
            if not isinstance(rec, dict) or not isinstance(rec.get("type"), str):
                log.bad_lines += 1
                continue
            if rec["type"] == "config":
                log.config = rec.get("config") or {}
                log.model = rec.get("model") or log.model
                continue
            step = rec.get("step", 0)
            if not isinstance(step, int) or isinstance(step, bool):
                log.bad_lines += 1
                continue
            latest[(rec["type"], step)] = rec
    by_type = defaultdict(list)
    for (kind, _), rec in sorted(latest.items(), key=lambda kv: kv[0][1]):
        by_type[kind].append(rec)
    log.records = dict(by_type)
    return log
