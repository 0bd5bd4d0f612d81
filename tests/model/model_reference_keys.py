"""The official GenCast parameter names and shapes, transcribed from the reference notes (§4).

Independent of the model code on purpose: tests compare `jax.eval_shape` of our model and our
checkpoint loader against this table. L = latent size, C = grid input channels + 3 structural.
"""

from __future__ import annotations

G2M = "grid2mesh_gnn/~_networks_builder/"
M2G = "mesh2grid_gnn/~_networks_builder/"
TR = "mesh_transformer/~/transformer/"


def official_param_shapes(
    latent: int = 512,
    num_layers: int = 16,
    ffw_hidden: int = 2048,
    grid_in: int = 267,
    n_out: int = 84,
    cond: int = 16,
) -> dict[str, tuple[int, ...]]:
    """{'module:param': shape} for the GenCast denoiser."""
    L = latent
    out: dict[str, tuple[int, ...]] = {
        "fourier_features_mlp/~/mlp/~/linear_0:w": (64, 32),
        "fourier_features_mlp/~/mlp/~/linear_0:b": (32,),
        "fourier_features_mlp/~/mlp/~/linear_1:w": (32, cond),
        "fourier_features_mlp/~/mlp/~/linear_1:b": (cond,),
    }

    def mlp(prefix: str, d_in: int, d_out: int = L, conditioned: bool = True) -> None:
        out[f"{prefix}_mlp/~/linear_0:w"] = (d_in, L)
        out[f"{prefix}_mlp/~/linear_0:b"] = (L,)
        out[f"{prefix}_mlp/~/linear_1:w"] = (L, d_out)
        out[f"{prefix}_mlp/~/linear_1:b"] = (d_out,)
        if conditioned:
            out[f"{prefix}_norm_conditioning/linear:w"] = (cond, 2 * d_out)
            out[f"{prefix}_norm_conditioning/linear:b"] = (2 * d_out,)

    mlp(G2M + "encoder_edges_grid2mesh", 4)
    mlp(G2M + "encoder_nodes_grid_nodes", grid_in)
    mlp(G2M + "encoder_nodes_mesh_nodes", grid_in)
    mlp(G2M + "processor_edges_0_grid2mesh", 3 * L)
    mlp(G2M + "processor_nodes_0_grid_nodes", L)
    mlp(G2M + "processor_nodes_0_mesh_nodes", 2 * L)

    for i in range(num_layers):
        b = f"{TR}block_{i:02d}/"
        for c in ("", "_1"):
            out[f"{b}block_{i:02d}_norm_conditioning{c}/linear:w"] = (cond, 2 * L)
            out[f"{b}block_{i:02d}_norm_conditioning{c}/linear:b"] = (2 * L,)
        for q in "qkv":
            out[f"{b}mha_proj_{q}:w"] = (L, L)
        out[f"{b}mha_final:w"] = (L, L)
        out[f"{b}mha_final:b"] = (L,)
        out[f"{b}ffw_up:w"] = (L, ffw_hidden)
        out[f"{b}ffw_up:b"] = (ffw_hidden,)
        out[f"{b}ffw_down:w"] = (ffw_hidden, L)
        out[f"{b}ffw_down:b"] = (L,)
    out[f"{TR}transformer_final_norm_conditioning/linear:w"] = (cond, 2 * L)
    out[f"{TR}transformer_final_norm_conditioning/linear:b"] = (2 * L,)

    mlp(M2G + "encoder_edges_mesh2grid", 4)
    mlp(M2G + "processor_edges_0_mesh2grid", 3 * L)
    mlp(M2G + "processor_nodes_0_grid_nodes", 2 * L)
    mlp(M2G + "processor_nodes_0_mesh_nodes", L)
    mlp(M2G + "decoder_nodes_grid_nodes", L, n_out, conditioned=False)
    return out


def official_config_entries(
    *,
    mesh_size: int,
    latent: int,
    num_layers: int,
    ffw_hidden: int,
    k_hop: int,
    n_out: int,
    attention_type: str = "splash_mha",
) -> dict[str, object]:
    """The config/description keys of an official checkpoint (GenCast task, demo defaults)."""
    import numpy as np

    inputs = [
        "2m_temperature", "mean_sea_level_pressure", "10m_v_component_of_wind",
        "10m_u_component_of_wind", "sea_surface_temperature", "temperature", "geopotential",
        "u_component_of_wind", "v_component_of_wind", "vertical_velocity", "specific_humidity",
        "year_progress_sin", "year_progress_cos", "day_progress_sin", "day_progress_cos",
        "geopotential_at_surface", "land_sea_mask",
    ]  # fmt: skip
    targets = [
        "2m_temperature", "mean_sea_level_pressure", "10m_v_component_of_wind",
        "10m_u_component_of_wind", "total_precipitation_12hr", "sea_surface_temperature",
        "temperature", "geopotential", "u_component_of_wind", "v_component_of_wind",
        "vertical_velocity", "specific_humidity",
    ]  # fmt: skip
    forcings = ["year_progress_sin", "year_progress_cos", "day_progress_sin", "day_progress_cos"]
    levels = [50, 100, 150, 200, 250, 300, 400, 500, 600, 700, 850, 925, 1000]
    e: dict[str, object] = {
        "description": np.array("synthetic GenCast-layout checkpoint for tests"),
        "license": np.array("CC BY-NC-SA 4.0 (test string)"),
        "task_config:input_duration": np.array("24h"),
    }
    for name, values in (
        ("input_variables", inputs),
        ("target_variables", targets),
        ("forcing_variables", forcings),
        ("pressure_levels", levels),
    ):
        for i, v in enumerate(values):
            e[f"task_config:{name}:{i}"] = np.array(v)
    st = "denoiser_architecture_config:sparse_transformer_config:"
    e.update(
        {
            st + "attention_k_hop": np.array(k_hop),
            st + "d_model": np.array(latent),
            st + "num_layers": np.array(num_layers),
            st + "num_heads": np.array(4),
            st + "attention_type": np.array(attention_type),
            st + "mask_type": np.array("lazy"),
            st + "block_q": np.array(1024),
            st + "block_kv": np.array(512),
            st + "block_kv_compute": np.array(256),
            st + "block_q_dkv": np.array(512),
            st + "block_kv_dkv": np.array(1024),
            st + "block_kv_dkv_compute": np.array(1024),
            st + "ffw_winit_final_mult": np.array(0.0),
            st + "attn_winit_final_mult": np.array(0.0),
            st + "ffw_hidden": np.array(ffw_hidden),
            "denoiser_architecture_config:mesh_size": np.array(mesh_size),
            "denoiser_architecture_config:latent_size": np.array(latent),
            "denoiser_architecture_config:hidden_layers": np.array(1),
            "denoiser_architecture_config:radius_query_fraction_edge_length": np.array(0.6),
            "denoiser_architecture_config:norm_conditioning_features:0": np.array(
                "noise_level_encodings"
            ),
            "denoiser_architecture_config:node_output_size": np.array(n_out),
            "sampler_config:max_noise_level": np.array(80.0),
            "sampler_config:min_noise_level": np.array(0.03),
            "sampler_config:num_noise_levels": np.array(20),
            "sampler_config:rho": np.array(7.0),
            "sampler_config:stochastic_churn_rate": np.array(2.5),
            "sampler_config:churn_min_noise_level": np.array(0.75),
            "sampler_config:churn_max_noise_level": np.array(np.inf),
            "sampler_config:noise_level_inflation_factor": np.array(1.05),
            "noise_config:training_noise_level_rho": np.array(7.0),
            "noise_config:training_max_noise_level": np.array(88.0),
            "noise_config:training_min_noise_level": np.array(0.02),
            "noise_encoder_config:apply_log_first": np.array(True),
            "noise_encoder_config:base_period": np.array(16.0),
            "noise_encoder_config:num_frequencies": np.array(32),
            "noise_encoder_config:output_sizes:0": np.array(32),
            "noise_encoder_config:output_sizes:1": np.array(16),
        }
    )
    return e
