"""GenCast's model config dataclasses, with GenCast's field names and defaults.

Field names and defaults follow the public GenCast code (reference notes §1.6), because they are
also the key names inside the official checkpoints (`denoiser_architecture_config:mesh_size`, ...).
Unlike upstream, every config is frozen: switching the attention backend for CPU/GPU is done with
`dataclasses.replace` (see `with_attention_type`), never by mutating a caller's config.

`ModelConfig` bundles the four model configs for the YAML files in `configs/model/` (loaded with
`gencast_rmmd.config.load_config(ModelConfig, path, kind="model")`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

AttentionType = Literal["splash_mha", "triblockdiag_mha", "mha"]
ATTENTION_TYPES: tuple[str, ...] = ("splash_mha", "triblockdiag_mha", "mha")


@dataclasses.dataclass(frozen=True)
class SparseTransformerConfig:
    """The mesh transformer (GenCast's `SparseTransformerConfig`).

    Attention is restricted to the `attention_k_hop`-hop neighbourhood (self included) of each mesh
    node. `attention_type`: `splash_mha` (TPU Pallas kernel, TPU only), `triblockdiag_mha` (banded
    dense attention, anywhere) or `mha` (dense masked attention). The splash block sizes are only
    used by `splash_mha`. `mask_type` ('lazy' or 'full') is kept for checkpoint compatibility; our
    splash mask is always computed lazily per block from the sparse k-hop matrix.
    """

    attention_k_hop: int
    d_model: int
    num_layers: int = 16
    num_heads: int = 4
    attention_type: str = "splash_mha"
    mask_type: str = "lazy"
    block_q: int = 1024
    block_kv: int = 512
    block_kv_compute: int = 256
    block_q_dkv: int = 512
    block_kv_dkv: int = 1024
    block_kv_dkv_compute: int = 1024
    ffw_winit_final_mult: float = 0.0
    attn_winit_final_mult: float = 0.0
    ffw_hidden: int = 2048
    name: str | None = None

    def validate(self) -> None:
        if self.attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"attention_type: expected one of {', '.join(ATTENTION_TYPES)}, "
                f"found {self.attention_type!r}"
            )
        if self.mask_type not in ("lazy", "full"):
            raise ValueError(f"mask_type: expected 'lazy' or 'full', found {self.mask_type!r}")
        for f in (
            "attention_k_hop", "d_model", "num_layers", "num_heads", "ffw_hidden", "block_q",
            "block_kv", "block_kv_compute", "block_q_dkv", "block_kv_dkv", "block_kv_dkv_compute",
        ):  # fmt: skip
            if getattr(self, f) < 1:
                raise ValueError(f"{f}: must be >= 1, found {getattr(self, f)}")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by num_heads ({self.num_heads})"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads


@dataclasses.dataclass(frozen=True)
class DenoiserArchitectureConfig:
    """The denoiser network (GenCast's `DenoiserArchitectureConfig`).

    `mesh_size` is the icosahedral refinement level of the single mesh (10*4^r+2 nodes);
    `latent_size` the GNN width (must equal the transformer's d_model); `hidden_layers` the hidden
    layers per GNN MLP; grid points connect to mesh nodes within
    `radius_query_fraction_edge_length` x the longest mesh edge. `node_output_size` is the number of
    output channels; None means "the task's target channels" (upstream fills it in by mutating the
    config; we derive it without mutation).
    """

    sparse_transformer_config: SparseTransformerConfig
    mesh_size: int
    latent_size: int = 512
    hidden_layers: int = 1
    radius_query_fraction_edge_length: float = 0.6
    norm_conditioning_features: tuple[str, ...] = ("noise_level_encodings",)
    grid2mesh_aggregate_normalization: float | None = None
    node_output_size: int | None = None

    def validate(self) -> None:
        if self.mesh_size < 0:
            raise ValueError(f"mesh_size: must be >= 0, found {self.mesh_size}")
        if self.latent_size < 1 or self.hidden_layers < 0:
            raise ValueError("latent_size must be >= 1 and hidden_layers >= 0")
        if self.latent_size != self.sparse_transformer_config.d_model:
            raise ValueError(
                f"sparse_transformer_config.d_model ({self.sparse_transformer_config.d_model}) "
                f"must equal latent_size ({self.latent_size}): the mesh latents feed the "
                "transformer directly"
            )
        # Below 1/sqrt(3) some grid points could be farther than the radius from every vertex of
        # their triangle and would receive no grid2mesh edge.
        if self.radius_query_fraction_edge_length <= 1.0 / math.sqrt(3.0):
            raise ValueError(
                "radius_query_fraction_edge_length: must be > 1/sqrt(3) ~ 0.577 so that every grid "
                f"point reaches a mesh node, found {self.radius_query_fraction_edge_length}"
            )
        if tuple(self.norm_conditioning_features) != ("noise_level_encodings",):
            raise ValueError(
                "norm_conditioning_features: only ('noise_level_encodings',) is supported, found "
                f"{self.norm_conditioning_features}"
            )
        if self.node_output_size is not None and self.node_output_size < 1:
            raise ValueError(f"node_output_size: must be >= 1, found {self.node_output_size}")
        self.sparse_transformer_config.validate()


@dataclasses.dataclass(frozen=True)
class NoiseEncoderConfig:
    """Noise-level embedding (GenCast's `NoiseEncoderConfig`): Fourier features of log(sigma)
    with frequencies k / base_period, k = 1..num_frequencies, then an MLP with `output_sizes`."""

    apply_log_first: bool = True
    base_period: float = 16.0
    num_frequencies: int = 32
    output_sizes: tuple[int, ...] = (32, 16)

    def validate(self) -> None:
        if self.base_period <= 0 or self.num_frequencies < 1 or not self.output_sizes:
            raise ValueError(
                "base_period must be > 0, num_frequencies >= 1 and output_sizes non-empty"
            )


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    """DPM-Solver++ 2S sampler with stochastic churn (GenCast's `SamplerConfig` and defaults).

    Noise levels: `num_noise_levels` values from `max_noise_level` down to `min_noise_level` with
    the rho schedule, then 0. Churn `stochastic_churn_rate / num_noise_levels` (capped at
    sqrt(2)-1) for sigma in [churn_min_noise_level, churn_max_noise_level]; added noise is inflated
    by `noise_level_inflation_factor` (EDM's S_noise).
    """

    max_noise_level: float = 80.0
    min_noise_level: float = 0.03
    num_noise_levels: int = 20
    rho: float = 7.0
    stochastic_churn_rate: float = 2.5
    churn_min_noise_level: float = 0.75
    churn_max_noise_level: float = math.inf
    noise_level_inflation_factor: float = 1.05
    # Churn up to the top of the schedule is GenCast's own setting (`.inf`); no other float of
    # any config may be infinite (`gencast_rmmd.config`).
    UNBOUNDED: ClassVar[tuple[str, ...]] = ("churn_max_noise_level",)

    def validate(self) -> None:
        if not 0 < self.min_noise_level < self.max_noise_level:
            raise ValueError(
                f"noise levels: need 0 < min_noise_level < max_noise_level, found "
                f"{self.min_noise_level} and {self.max_noise_level}"
            )
        if self.num_noise_levels < 1:
            raise ValueError(f"num_noise_levels: must be >= 1, found {self.num_noise_levels}")
        if self.rho <= 0 or self.stochastic_churn_rate < 0:
            raise ValueError("rho must be > 0 and stochastic_churn_rate >= 0")
        if not self.noise_level_inflation_factor > 0:
            raise ValueError(
                "noise_level_inflation_factor: must be > 0 (GenCast: 1.05), found "
                f"{self.noise_level_inflation_factor}"
            )


@dataclasses.dataclass(frozen=True)
class NoiseConfig:
    """Training noise distribution (GenCast's `NoiseConfig`): sigma = rho-quantile of U(0,1) on
    [training_min_noise_level, training_max_noise_level]."""

    training_noise_level_rho: float = 7.0
    training_max_noise_level: float = 88.0
    training_min_noise_level: float = 0.02

    def validate(self) -> None:
        if not 0 < self.training_min_noise_level < self.training_max_noise_level:
            raise ValueError(
                "need 0 < training_min_noise_level < training_max_noise_level, found "
                f"{self.training_min_noise_level} and {self.training_max_noise_level}"
            )
        if self.training_noise_level_rho <= 0:
            raise ValueError("training_noise_level_rho must be > 0")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A GenCast model: the four configs stored in a GenCast checkpoint (besides the task).

    This is the schema of `configs/model/*.yaml`. The task (variables, levels) comes from the data
    config; `description` is free text copied into exported checkpoints.
    """

    denoiser_architecture_config: DenoiserArchitectureConfig
    noise_encoder_config: NoiseEncoderConfig = NoiseEncoderConfig()
    sampler_config: SamplerConfig = SamplerConfig()
    noise_config: NoiseConfig = NoiseConfig()
    description: str = ""

    def validate(self) -> None:
        self.denoiser_architecture_config.validate()
        self.noise_encoder_config.validate()
        self.sampler_config.validate()
        self.noise_config.validate()


def with_attention_type(
    arch: DenoiserArchitectureConfig, attention_type: str, mask_type: str | None = None
) -> DenoiserArchitectureConfig:
    """A copy of `arch` with another attention backend (the caller's config is not mutated)."""
    st = dataclasses.replace(
        arch.sparse_transformer_config,
        attention_type=attention_type,
        mask_type=mask_type or arch.sparse_transformer_config.mask_type,
    )
    return dataclasses.replace(arch, sparse_transformer_config=st)
