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

from collections.abc import Mapping

import numpy as np

from gencast_rmmd.errors import OutputError

WINDOW_KEYS = ("train_start", "train_end", "examples")


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


def examples_window(meta: Mapping) -> dict:
    """The training examples a checkpoint's meta records: `WINDOW_KEYS` found at its top level
    (teacher runs) or in its `provenance` (distillation runs); older runs may lack `examples`."""
    found = {}
    for rec in (meta.get("provenance") or {}, meta):
        found.update({k: rec[k] for k in WINDOW_KEYS if k in rec})
    return found


def refuse_other_examples(run_dir, old_meta: Mapping, new_meta: Mapping) -> None:
    """Refuse to resume a run whose checkpoint (`old_meta`) was trained on other examples than
    the run now selects (`new_meta`): the window in the config or the window rule of this module
    changed under it (a run begun before the rule kept the last target out of a held-out split
    had one example more), so the resumed batches would not be the ones its data order was
    drawn over. Keys that only one side records are not compared."""
    old, new = examples_window(old_meta), examples_window(new_meta)
    changed = [k for k in WINDOW_KEYS if k in old and k in new and old[k] != new[k]]
    if changed:

        def show(w):
            n = f", {w['examples']} examples" if "examples" in w else ""
            return f"{w.get('train_start')}..{w.get('train_end')}{n}"

        raise OutputError(
            f"{run_dir} was trained on {show(old)} and would now resume on {show(new)} (the "
            "training window or its rule changed); delete it to train again, or use another --out"
        )


def refuse_resume_on_other_examples(run_dir, checkpoints, new_meta: Mapping) -> None:
    """`refuse_other_examples` against the latest checkpoint under `checkpoints` (none there:
    nothing to compare). Both trainers call it with their other input checks, before anything is
    written into `run_dir`, so a refused resume leaves the run's records as they were."""
    from gencast_rmmd.training.checkpointing import CheckpointManager, latest_step

    if latest_step(checkpoints) is None:
        return
    mngr = CheckpointManager(checkpoints)
    try:
        old = mngr.read_meta()
    finally:
        mngr.close()
    refuse_other_examples(run_dir, old, new_meta)
