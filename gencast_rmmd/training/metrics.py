"""JSON-lines metrics (`metrics.jsonl`): one object per logged step, resume-safe.

Each line is `{"step": int, "time": unix seconds, <name>: float, ...}`. On resume from step N the
writer first drops every record with `step > N` (written after the checkpoint the run restarts
from), so the file reads as if the run had never been interrupted.
"""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import numpy as np

from gencast_rmmd.remote import write_text


def _plain(v: Any) -> Any:
    if isinstance(v, np.generic | np.ndarray):
        v = np.asarray(v)
        v = v.item() if v.size == 1 else v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf; keep them readable
    return v


class MetricsWriter:
    """Append metric records to `path` (JSON lines); `resume_step` trims records after it."""

    def __init__(self, path: str | pathlib.Path, resume_step: int | None = None, enabled=True):
        self.path = pathlib.Path(path)
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if resume_step is None:
                resume_step = -1  # fresh run over an old file: start empty
            self._truncate_after(resume_step)

    def _truncate_after(self, step: int) -> None:
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if int(rec.get("step", -1)) <= step:
                keep.append(line)
        write_text(self.path, "".join(k + "\n" for k in keep))

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        """Append one record (values converted to plain floats/lists)."""
        if not self.enabled:
            return
        rec = {"step": int(step), "time": time.time()}
        rec.update({k: _plain(v) for k, v in metrics.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()


def read_metrics(path: str | pathlib.Path) -> list[dict]:
    """All records of a metrics file, in order."""
    p = pathlib.Path(path)
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
