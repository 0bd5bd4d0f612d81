"""Training windows: which init times a `[train_start, train_end]` window admits, and the period a
set of examples covers. One rule for the teacher trainer and the distillation.

An example at init time t reads the input frames `t - (input_frames - 1) step .. t` and the target
`t + step`. A window admits t only when that whole span lies inside it, so a window that ends
where a held-out split begins (`configs/data/embedded.yaml`: train up to 2001-09-30T12, eval from
2001-10-01T00) never trains on a held-out time, not even as the last init's target. The period
recorded in the provenance (`train_start` = first input frame, `train_end` = last target) is the
same kind of window, so it admits the same examples again (a student distilled over its
teacher's period trains on the teacher's examples).
"""

from __future__ import annotations

import numpy as np


def select_init_times(
    all_times: np.ndarray, start: str | None, end: str | None, task
) -> np.ndarray:
    """The init times of `all_times` whose whole window (first input frame .. target) lies in
    `[start, end]` (inclusive ISO strings; None: unbounded on that side). `task`: a `TaskConfig`
    (`step_hours`, `input_frames`). Returns datetime64[ns]."""
    t = np.asarray(all_times).astype("datetime64[ns]")
    step = np.timedelta64(task.step_hours, "h")
    keep = np.ones(t.shape, bool)
    if start is not None:
        keep &= t - step * (task.input_frames - 1) >= np.datetime64(start, "ns")
    if end is not None:
        keep &= t + step <= np.datetime64(end, "ns")
    return t[keep]


def training_period(init_times: np.ndarray, task) -> tuple[str, str]:
    """`(train_start, train_end)` of examples at `init_times`: the first input frame of the
    earliest and the target of the latest, ISO strings to the second."""
    t = np.asarray(init_times).astype("datetime64[ns]")
    step = np.timedelta64(task.step_hours, "h")
    start = (t.min() - step * (task.input_frames - 1)).astype("datetime64[s]")
    return str(start), str((t.max() + step).astype("datetime64[s]"))
