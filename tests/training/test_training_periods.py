"""Training windows (`gencast_rmmd.training.periods`): one rule for the teacher and the
distillation; a train split that ends where the eval split begins trains on no eval time."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from gencast_rmmd.training import periods

TASK = SimpleNamespace(step_hours=12, input_frames=2)
# The embedded nature run's calendar (configs/data/embedded.yaml: 730 days of 12 h steps from
# 2000-01-01T00) and its splits.
TIMES = np.datetime64("2000-01-01T00", "ns") + np.arange(1460) * np.timedelta64(12, "h")
TRAIN = ("2000-01-01T00:00", "2001-09-30T12:00")
EVAL_START = np.datetime64("2001-10-01T00:00", "ns")


def _brute_force(times, start, end, task):
    """Every frame an example reads, one by one, inside [start, end]."""
    step = np.timedelta64(task.step_hours, "h")
    lo, hi = np.datetime64(start, "ns"), np.datetime64(end, "ns")
    keep = []
    for t in times:
        frames = [t - k * step for k in range(task.input_frames)] + [t + step]
        if all(lo <= f <= hi for f in frames):
            keep.append(t)
    return np.array(keep, dtype="datetime64[ns]")


def test_the_whole_window_of_every_example_lies_in_the_split():
    inits = TIMES[1:-1]  # the store's valid init times (one input frame before, a target after)
    got = periods.select_init_times(inits, *TRAIN, TASK)
    np.testing.assert_array_equal(got, _brute_force(inits, *TRAIN, TASK))
    # The last example's target is the split's last time, never the first eval time.
    assert got.max() + np.timedelta64(12, "h") == np.datetime64(TRAIN[1], "ns") < EVAL_START
    assert got.size == 1276  # init times 2000-01-01T12 .. 2001-09-30T00 (the init-time rule: 1277)
    assert periods.training_period(got, TASK) == ("2000-01-01T00:00:00", "2001-09-30T12:00:00")
    # The recorded period admits the same examples again (a student distilled over its
    # teacher's period trains on the teacher's examples).
    np.testing.assert_array_equal(
        periods.select_init_times(inits, *periods.training_period(got, TASK), TASK), got
    )
    three = SimpleNamespace(step_hours=6, input_frames=3)
    np.testing.assert_array_equal(
        periods.select_init_times(inits, *TRAIN, three), _brute_force(inits, *TRAIN, three)
    )
    np.testing.assert_array_equal(periods.select_init_times(inits, None, None, TASK), inits)


def test_teacher_and_distillation_share_the_rule():
    from gencast_rmmd.distill import gencast
    from gencast_rmmd.training import teacher

    assert teacher.select_init_times is periods.select_init_times
    assert gencast.select_init_times is periods.select_init_times
    assert teacher.training_period is gencast.training_period is periods.training_period


def test_a_resume_on_other_examples_is_refused_for_both_meta_layouts():
    """Teacher checkpoints record the window at the top of their meta, distillation ones in its
    provenance; old checkpoints lack `examples`. A changed value of a key both record is an
    OutputError naming both windows; keys one side lacks are not compared."""
    import pytest

    from gencast_rmmd.errors import OutputError

    times = periods.select_init_times(TIMES, *TRAIN, TASK)
    start, end = periods.training_period(times, TASK)
    new = {
        "kind": "distill-mmd",
        "provenance": {"train_start": start, "train_end": end, "examples": int(times.size)},
    }
    assert periods.examples_window(new) == {
        "train_start": start,
        "train_end": end,
        "examples": 1276,
    }
    # A run begun under the old rule (its last target was the eval split's first time).
    old = {
        "kind": "distill-mmd",
        "provenance": {"train_start": start, "train_end": "2001-10-01T00:00:00"},
    }
    with pytest.raises(
        OutputError,
        match="RUN was trained on 2000-01-01T00:00:00..2001-10-01T"
        "00:00:00 and would now resume on .*2001-09-30T12:00:00, 1276 examples",
    ):
        periods.refuse_other_examples("RUN", old, new)
    periods.refuse_other_examples("RUN", {"train_start": start, "train_end": end}, new)
    periods.refuse_other_examples("RUN", {"kind": "image"}, new)


def test_the_early_check_reads_the_latest_checkpoint(tmp_path):
    """`refuse_resume_on_other_examples` (called by both trainers before they write into the
    run directory) compares against the latest checkpoint's meta; no checkpoint: no check."""
    import pytest

    from gencast_rmmd.errors import OutputError
    from gencast_rmmd.training.checkpointing import CheckpointManager

    ckpts = tmp_path / "mmd" / "checkpoints"
    window = {"train_start": "2000-01-01T00:00:00", "train_end": "2001-09-30T12:00:00"}
    periods.refuse_resume_on_other_examples(tmp_path / "mmd", ckpts, {"examples": 3})
    assert not ckpts.exists()  # nothing created
    mngr = CheckpointManager(ckpts)
    mngr.save(2, {"x": np.zeros(2)}, {"provenance": dict(window, examples=1276)})
    mngr.close()
    periods.refuse_resume_on_other_examples(tmp_path / "mmd", ckpts, dict(window, examples=1276))
    with pytest.raises(OutputError, match="1276 examples and would now resume on .*1275 examples"):
        periods.refuse_resume_on_other_examples(
            tmp_path / "mmd", ckpts, dict(window, examples=1275)
        )
