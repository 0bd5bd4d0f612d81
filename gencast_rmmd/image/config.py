"""Configs of the image path (`configs/image/*.yaml`), loaded by `gencast_rmmd.config.load_config`.

One top-level `ImageConfig` groups the data, the U-ViT, the variance-preserving schedule, the
teacher and classifier training, the MMD distillation (phase 1), the reward fine-tuning (RMMD and
the baselines, phase 2) and the Pareto sweep. Defaults are the embedded digits setting; see
`docs/image.md` for every key and `configs/image/imagenet64.yaml` for the ImageNet 64 setting.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

from gencast_rmmd.distill.objectives import check_s_floor
from gencast_rmmd.distill.student_sampler import StudentSamplerConfig

REWARDS = ("bw", "laplacian", "classifier")
METHODS = ("rmmd", "draft", "refl", "dipp", "hypernoise")


def _check_counts(cfg, *names: str) -> None:
    """Each named field of `cfg` is an integer >= 1 (steps, batch sizes, sample counts)."""
    for name in names:
        if not getattr(cfg, name) >= 1:
            raise ValueError(f"{name} must be >= 1, found {getattr(cfg, name)}")


def _check_accum(cfg) -> None:
    """`grad_accum_steps` is >= 1 and divides `batch_size` (`training.loop.check_accum`)."""
    from gencast_rmmd.training.loop import check_accum

    check_accum(cfg.batch_size, cfg.grad_accum_steps)


def _check_rate(cfg, name: str = "learning_rate") -> None:
    """A learning rate: finite and > 0 (0 would train nothing)."""
    if not (math.isfinite(getattr(cfg, name)) and getattr(cfg, name) > 0):
        raise ValueError(f"{name} must be finite and > 0, found {getattr(cfg, name)}")


def _check_decay(cfg, name: str = "ema_decay") -> None:
    """An EMA decay in [0, 1): 0 is no averaging; 1 would never move from the initial weights."""
    if not 0 <= getattr(cfg, name) < 1:
        raise ValueError(f"{name} must be in [0, 1), found {getattr(cfg, name)}")


@dataclasses.dataclass(frozen=True)
class ImageDataConfig:
    """Where the images come from.

    source: `digits` (scikit-learn's 8x8 handwritten digits, embedded, no download) or `npz`
    (downsampled-ImageNet style `.npz` with arrays `data` [N, 3*H*W] uint8 and `labels` [N],
    labels 1-based as in the official files; set `label_offset` to 0 for 0-based labels).
    """

    source: Literal["digits", "npz"] = "digits"
    path: str | None = None
    resolution: int = 8
    channels: int = 1
    num_classes: int = 10
    label_offset: int = 1
    max_examples: int | None = None
    eval_fraction: float = 0.2
    seed: int = 0

    def validate(self) -> None:
        if self.source == "npz" and not self.path:
            raise ValueError("source 'npz' needs data.path (the downsampled-ImageNet .npz file)")
        if self.source == "digits" and self.path:  # it would train on the digits, silently
            raise ValueError(
                f"path {self.path!r} is read by source 'npz' only, found source 'digits'; pass "
                "--data PATH (or set data.source=npz) to train on that file"
            )
        if self.resolution < 4 or self.resolution % 4:
            raise ValueError(
                f"resolution must be a multiple of 4 and >= 4, found {self.resolution}"
            )
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, found {self.channels}")
        if not 0.0 < self.eval_fraction < 1.0:
            raise ValueError(f"eval_fraction must be in (0, 1), found {self.eval_fraction}")
        if self.max_examples is not None and self.max_examples < 1:
            raise ValueError(f"max_examples must be >= 1 (or null), found {self.max_examples}")
        _check_counts(self, "num_classes")
        if self.label_offset < 0:
            raise ValueError(f"label_offset must be >= 0, found {self.label_offset}")


@dataclasses.dataclass(frozen=True)
class UViTConfig:
    """U-ViT (Simple Diffusion): conv stages at full and half resolution around a transformer."""

    channels: tuple[int, ...] = (32, 64)
    blocks_per_stage: int = 1
    transformer_layers: int = 2
    transformer_width: int = 96
    heads: int = 4
    mlp_ratio: int = 4
    embed_dim: int = 128
    dropout: float = 0.1

    def validate(self) -> None:
        if len(self.channels) < 1:
            raise ValueError("channels needs at least one stage")
        if not all(c >= 1 for c in self.channels):
            raise ValueError(f"channels must all be >= 1, found {list(self.channels)}")
        _check_counts(
            self, "blocks_per_stage", "transformer_layers", "transformer_width", "heads",
            "mlp_ratio", "embed_dim",
        )  # fmt: skip
        if self.transformer_width % self.heads:
            raise ValueError(
                f"transformer_width ({self.transformer_width}) must divide by heads ({self.heads})"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), found {self.dropout}")


@dataclasses.dataclass(frozen=True)
class ScheduleConfig:
    """Shifted cosine schedule: logSNR(t) = -2 log tan(pi t / 2) + 2 log(shift), clipped.

    `shift` = 64 / resolution in Simple Diffusion for images above 64 px (they use 2 log(64/d));
    1.0 is the plain cosine schedule. The clip keeps logSNR in [logsnr_min, logsnr_max].
    """

    shift: float = 1.0
    logsnr_min: float = -15.0
    logsnr_max: float = 15.0

    def validate(self) -> None:
        if self.shift <= 0:
            raise ValueError(f"shift must be > 0, found {self.shift}")
        if self.logsnr_min >= self.logsnr_max:
            raise ValueError("logsnr_min must be below logsnr_max")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Adam(b1, b2, eps) with a constant learning rate after a linear warm-up, grad-norm clip."""

    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.99
    eps: float = 1e-12
    warmup_steps: int = 100
    grad_clip: float = 1.0
    decay_to_zero: bool = False

    def validate(self) -> None:
        from gencast_rmmd.training.loop import check_adam

        _check_rate(self)
        check_adam(self)
        if not self.grad_clip >= 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping), found {self.grad_clip}")


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """Teacher training (v-prediction loss, i.e. x0-MSE weighted by SNR+1) and sampling.

    `grad_accum_steps` (here, in `MMDConfig` and in `FinetuneConfig`): each batch of
    `batch_size` runs as that many micro-batches whose gradients are averaged into one update,
    so a step holds one micro-batch's activations (`training.micro_batches`).
    """

    steps: int = 3000
    batch_size: int = 128
    grad_accum_steps: int = 1
    optim: OptimConfig = OptimConfig(learning_rate=2e-3, warmup_steps=200, decay_to_zero=True)
    ema_decay: float = 0.999
    sampler: StudentSamplerConfig = StudentSamplerConfig(
        num_steps=64, max_noise_level=80.0, min_noise_level=0.01, rho=7.0, eta=1.0
    )
    seed: int = 0

    def validate(self) -> None:
        _check_counts(self, "steps", "batch_size")
        _check_accum(self)
        _check_decay(self)


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Small CNN classifiers: one gives the reward, an independent one gives the evaluation."""

    width: int = 16
    feature_dim: int = 32
    steps: int = 600
    batch_size: int = 128
    learning_rate: float = 2e-3
    noise_augment: float = 0.1
    seed: int = 1

    def validate(self) -> None:
        _check_counts(self, "width", "feature_dim", "steps", "batch_size")
        _check_rate(self)
        if not self.noise_augment >= 0:
            raise ValueError(f"noise_augment must be >= 0, found {self.noise_augment}")


@dataclasses.dataclass(frozen=True)
class MMDConfig:
    """Phase 1: moment matching (student and auxiliary denoiser), off-policy (data start).

    `sampler` is the distill area's K-step student sampler on the VE view of the VP model
    (K = 8 default; 1, 2, 4 allowed); the objective is `gencast_rmmd.distill.objectives` with the
    weighting / regulariser knobs below (see that module for their meaning).
    `ema_decay > 0` returns the moving average of the student's iterates (decay warmed up as
    min(ema_decay, (1 + i) / (10 + i))); `aux_lr_ratio` gives the auxiliary denoiser its own
    learning rate, `aux_lr_ratio` x the student's (two time scales). `update_schedule:
    alternating` gives each group its own optimizer state (`training.mmd_optimizers`).
    `s_floor` (the lowest level of s, below the student's last level) is phase 2's too.
    """

    sampler: StudentSamplerConfig = StudentSamplerConfig(
        num_steps=8, max_noise_level=80.0, min_noise_level=0.03, rho=100.0, eta=1.0
    )
    steps: int = 1500
    batch_size: int = 128
    grad_accum_steps: int = 1
    optim: OptimConfig = OptimConfig(learning_rate=3e-4, warmup_steps=50, b1=0.0)
    update_schedule: Literal["alternating", "simultaneous"] = "simultaneous"
    time_sampling: Literal["continuous", "grid"] = "continuous"
    mmd_weighting: Literal["uniform", "edm", "inv_sigma2"] = "uniform"
    aux_weighting: Literal["uniform", "edm", "inv_sigma2"] = "edm"
    aux_reg_weight: float = 0.0
    s_floor: float = 0.01
    dropout: bool = True
    ema_decay: float = 0.0
    aux_lr_ratio: float = 1.0
    seed: int = 2

    def validate(self) -> None:
        _check_counts(self, "steps", "batch_size")
        _check_accum(self)
        _check_decay(self)
        if self.aux_lr_ratio <= 0:
            raise ValueError(f"aux_lr_ratio must be > 0, found {self.aux_lr_ratio}")
        if self.aux_reg_weight < 0:
            raise ValueError(f"aux_reg_weight must be >= 0, found {self.aux_reg_weight}")
        if self.sampler.num_steps not in (1, 2, 4, 8):
            raise ValueError(
                f"sampler.num_steps must be 1, 2, 4 or 8, found {self.sampler.num_steps}"
            )
        # Phase 1 and phase 2 (which keeps the phase-1 floor) draw s down to s_floor, one student
        # step below t; it must lie below the student's last level (else the draws from that
        # level get s = t and nothing to match). DI++'s one-step student ends at max_noise_level.
        if self.s_floor <= 0:
            raise ValueError(f"s_floor: must be > 0, found {self.s_floor}")
        check_s_floor(self, self.sampler, "mmd.", "mmd.sampler.")


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Phase 2: RMMD and the baselines, each with its reward weight `lambda` swept.

    rmmd: L = L_MMD(on-policy) - lambda R + (lambda * reg_ratio) ||G - sg G0||^2.
    draft: L = -lambda R(x0 after the K-step chain, gradient through the last `draft_k` steps)
           + draft_l2 ||theta - theta0||^2.
    refl: L = -lambda R(x0 from one gradient step at a random early stop) + denoising loss on data;
          the stop index is uniform on {refl_min_stop, ..., K-1} (-1: K // 2, the later half).
    dipp: the RMMD loss with a 1-step student from t = 1 (DI++).
    hypernoise: the student frozen; a noise network f (width `hypernoise_width`) modulates every
           noise it draws, L = -lambda R(G(eps + f(eps))) + hypernoise_kl * 0.5 sum_j mean f(eps_j)^2.
    """

    steps: int = 300
    batch_size: int = 64
    grad_accum_steps: int = 1
    optim: OptimConfig = OptimConfig(learning_rate=3e-4, warmup_steps=0, b1=0.0)
    on_policy: Literal["discrete", "continuous"] = "discrete"
    reg_ratio: float = 0.5
    m_ref: Literal["teacher", "frozen_aux"] = "teacher"
    draft_k: int = 1
    draft_l2: float = 1.0
    refl_min_stop: int = -1
    refl_data_weight: float = 1.0
    hypernoise_width: int = 32
    hypernoise_kl: float = 1.0
    dropout: bool = True
    seed: int = 3

    def validate(self) -> None:
        _check_counts(self, "steps", "batch_size", "draft_k", "hypernoise_width")
        _check_accum(self)
        for name in ("reg_ratio", "draft_l2", "refl_data_weight", "hypernoise_kl"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, found {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ParetoConfig:
    """The lambda sweep: methods x rewards x lambdas, evaluated every `eval_every` steps.

    `lambdas[reward]` is every method's lambda list for that reward unless
    `method_lambdas[method][reward]` gives that method its own: lambda multiplies a reward
    against a different regulariser in each method (RMMD: the MMD term and lambda/2 L2 anchor;
    DRaFT: `draft_l2 ||theta - theta0||^2`; ReFL: the denoising loss), so comparable fronts need
    per-method ranges that span the same rewards.
    """

    methods: tuple[str, ...] = METHODS
    rewards: tuple[str, ...] = REWARDS
    lambdas: dict[str, tuple[float, ...]] = dataclasses.field(
        default_factory=lambda: {
            "bw": (0.3, 1.0, 3.0),
            "laplacian": (0.3, 1.0, 3.0),
            "classifier": (0.03, 0.1, 0.3),
        }
    )
    method_lambdas: dict[str, dict[str, tuple[float, ...]]] = dataclasses.field(
        default_factory=dict
    )
    eval_every: int = 100
    eval_samples: int = 1000
    dipp_mmd_steps: int = 800
    # Sample sets of `eval_samples` pooled into ONE distance in the teacher / student comparison
    # (`distill_eval.json`, noise seeds 7, 8, ...). Measured on digits (docs/image.md): the
    # 8-step student's pooled distance varies 1.27-1.63 between blocks of 8 sets of 500, and
    # 1.31 / 1.45 between two blocks of 32 (the teacher's: 1.23-1.30 and 1.23 / 1.24).
    distill_eval_sets: int = 32
    # Independent jobs run at once, in threads: the evaluation's sample sets, the two phase-1
    # students (K and K = 1 for DI++) and the sweep's fine-tuning runs. XLA on CPU keeps about
    # 1.5 of 2 cores busy with one of these small networks; two at a time took 16 s instead of
    # 23-26 s for 6 teacher sample sets on 2 cores. Every result is the same for any value
    # (each job has its own seeds); 1 runs them one after the other.
    workers: int = 2

    def lambdas_for(self, method: str, reward: str) -> tuple[float, ...]:
        """The lambdas swept for (method, reward): the method's own list, else the reward's."""
        return tuple(self.method_lambdas.get(method, {}).get(reward, self.lambdas[reward]))

    def validate(self) -> None:
        if not self.methods or not self.rewards:
            raise ValueError(
                f"the sweep needs at least one method and one reward, found methods "
                f"{list(self.methods)} and rewards {list(self.rewards)}"
            )
        for m in self.methods:
            if m not in METHODS:
                raise ValueError(f"unknown method {m!r}; allowed: {', '.join(METHODS)}")
        for r in self.rewards:
            if r not in REWARDS:
                raise ValueError(f"unknown reward {r!r}; allowed: {', '.join(REWARDS)}")
            if r not in self.lambdas:
                raise ValueError(f"lambdas has no entry for reward {r!r}")
        for m, per_reward in self.method_lambdas.items():
            if m not in METHODS:
                raise ValueError(
                    f"method_lambdas: unknown method {m!r}; allowed: {', '.join(METHODS)}"
                )
            for r in per_reward:
                if r not in REWARDS:
                    raise ValueError(
                        f"method_lambdas.{m}: unknown reward {r!r}; allowed: {', '.join(REWARDS)}"
                    )
        lists = {f"lambdas.{r}": v for r, v in self.lambdas.items()}
        for m, per_reward in self.method_lambdas.items():
            lists.update({f"method_lambdas.{m}.{r}": v for r, v in per_reward.items()})
        for key, values in lists.items():
            bad = [x for x in values if not (math.isfinite(x) and x >= 0)]
            if bad:  # lambda weighs the reward as -lambda R: a negative one minimises the reward
                raise ValueError(f"{key}: lambdas must be finite and >= 0, found {bad[0]}")
        for r in self.rewards:  # an empty method_lambdas list skips that method (hypernoise)
            if not any(self.lambdas_for(m, r) for m in self.methods):
                raise ValueError(
                    f"reward {r!r} gets no run: every method's lambda list for it is empty "
                    f"(methods {list(self.methods)}); give lambdas.{r} or drop it from rewards"
                )
        _check_counts(
            self, "eval_every", "eval_samples", "dipp_mmd_steps", "distill_eval_sets", "workers"
        )


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Everything the `gencast-rmmd image` commands need."""

    data: ImageDataConfig = ImageDataConfig()
    model: UViTConfig = UViTConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    teacher: TeacherConfig = TeacherConfig()
    classifier: ClassifierConfig = ClassifierConfig()
    mmd: MMDConfig = MMDConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    pareto: ParetoConfig = ParetoConfig()
    inception_weights: str | None = None
    inception_reference_stats: str | None = None

    def validate(self) -> None:
        if self.inception_reference_stats is not None and self.inception_weights is None:
            raise ValueError(
                "inception_reference_stats needs inception_weights: the statistics are of "
                "InceptionV3 features, which only the weights give (docs/image.md)"
            )
        # A cosine student grid is the teacher's training schedule at t = k/K: the same one.
        sch = self.schedule
        for where, smp in (
            ("teacher.sampler", self.teacher.sampler),
            ("mmd.sampler", self.mmd.sampler),
        ):
            got = (smp.cosine_shift, smp.cosine_logsnr_min, smp.cosine_logsnr_max)
            if smp.grid == "cosine" and got != (sch.shift, sch.logsnr_min, sch.logsnr_max):
                raise ValueError(
                    f"{where}: a cosine grid must be the schedule's (shift {sch.shift:g}, "
                    f"logsnr [{sch.logsnr_min:g}, {sch.logsnr_max:g}]), found "
                    f"cosine_shift {got[0]:g}, cosine_logsnr [{got[1]:g}, {got[2]:g}]"
                )
