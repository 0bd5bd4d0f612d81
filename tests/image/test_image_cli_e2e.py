"""End to end: `gencast-rmmd image pareto` on the digits with tiny step counts (slow: compiles)."""

from __future__ import annotations

import csv
import json

import pytest

from gencast_rmmd.cli import main

TINY = [
    "classifier.steps=5", "teacher.steps=5", "teacher.sampler.num_steps=4",
    "mmd.steps=3", "mmd.sampler.num_steps=2", "pareto.dipp_mmd_steps=2",
    "finetune.steps=2", "finetune.batch_size=8", "pareto.eval_every=1",
    "pareto.eval_samples=40", "pareto.rewards=[bw]", "pareto.lambdas.bw=[1.0]",
    "pareto.method_lambdas={draft: {bw: [1.0, 10.0]}}", "pareto.distill_eval_sets=2",
]  # fmt: skip


@pytest.mark.slow
def test_image_pareto_cli_end_to_end(tmp_path, monkeypatch):
    from gencast_rmmd.image import finetune

    calls = []
    real_generate = finetune.generate

    def counting_generate(*a, **kw):
        calls.append(1)
        return real_generate(*a, **kw)

    monkeypatch.setattr(finetune, "generate", counting_generate)
    out = tmp_path / "run"
    args = ["image", "pareto", "--out", str(out), "--no-progress"]
    for s in TINY:
        args += ["--set", s]
    assert main(args) == 0
    # 6 runs x 3 evaluations; the step-0 samples of rmmd, draft (2 lambdas) and refl are the
    # phase-1 student's, generated once for all four (dipp and hypernoise start elsewhere)
    assert len(calls) == 6 * 3 - 3
    with open(out / "pareto.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["method", "reward", "lambda", "step", "distance", "reward_value"]
    assert {r["method"] for r in rows} == {"mmd", "rmmd", "draft", "refl", "dipp", "hypernoise"}
    # each fine-tuning run is evaluated at steps 0, 1, 2; DRaFT runs its own two lambdas
    assert sorted(int(r["step"]) for r in rows if r["method"] == "refl") == [0, 1, 2]
    draft = [(float(r["lambda"]), int(r["step"])) for r in rows if r["method"] == "draft"]
    assert sorted(draft) == [(lam, s) for lam in (1.0, 10.0) for s in (0, 1, 2)]
    (mmd,) = [(r["distance"], r["reward_value"]) for r in rows if r["method"] == "mmd"]
    for r in rows:
        if r["method"] in ("rmmd", "draft", "refl") and int(r["step"]) == 0:
            assert (r["distance"], r["reward_value"]) == mmd
    assert (out / "pareto.png").stat().st_size > 1000
    summary = json.loads((out / "pareto_summary.json").read_text())
    assert summary["distance_name"] == "frechet_classifier_distance"
    for name in ("teacher_eval.json", "distill_eval.json", "teacher.npz", "student_k2.npz"):
        assert (out / name).exists()
    # the teacher / student comparison pools `distill_eval_sets` sets of `eval_samples`
    distill = json.loads((out / "distill_eval.json").read_text())
    assert distill["seeds"] == [7, 8]
    for key in ("teacher", "student_mmd_k2", "teacher_k2_same_sampler"):
        assert distill[key]["samples"] == 80
        assert len(distill[key]["frechet_classifier_distance_per_set"]) == 2
    # a second call resumes: nothing is retrained and the outputs are identical
    before = (out / "pareto.csv").read_text()
    assert main(args) == 0
    assert (out / "pareto.csv").read_text() == before
    # `image distill` alone (teacher sets drawn beside phase 1, one job at a time) gives the
    # same comparison as the sweep's (teacher sets drawn beside both phase-1 students)
    first = (out / "distill_eval.json").read_text()
    (out / "distill_eval.json").unlink()
    distill_args = [a if a != "pareto" else "distill" for a in args]
    assert main(distill_args + ["--set", "pareto.workers=1"]) == 0
    assert (out / "distill_eval.json").read_text() == first
