"""Moment matching distillation (phase 1) and RMMD (phase 2) of GenCast; see docs/distill.md.

Modules (import them directly; this package imports nothing heavy):
- `student_sampler`: the K-step DDIM-eta student sampler (`sample`, `sample_trajectory`).
- `crps`: the one differentiable fair CRPS (`fair_crps`) and the CRPS reward.
- `objectives`: the MMD/RMMD surrogate losses (`ObjectiveConfig`, `make_objective`).
- `trainer`: one phase on the shared training loop (`PhaseConfig`, `run_phase`).
- `gencast`: the GenCast pipeline behind `gencast-rmmd distill` (`DistillConfig`, `run_distill`).
"""
