"""The grid2mesh / mesh2grid GNN against a plain numpy interaction network on the same params."""

from __future__ import annotations

import haiku as hk
import jax
import numpy as np
import pytest

from gencast_rmmd.model.gnn import BipartiteInteractionGNN
from gencast_rmmd.model.noise_encoder import conditioned_layer_norm

L, B, C = 8, 2, 16


def _swish(x):
    return x / (1.0 + np.exp(-x))


def _ln(x, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps)


def reference(params, name, nodes, ef, s, r, cond, *, embed, sender, receiver, out):
    """One-step GraphCast interaction network in numpy (reference notes §1.5)."""
    p = {k.split("~_networks_builder/")[1]: v for k, v in params.items() if k.startswith(name)}

    def mlp(prefix, x):
        h = x @ p[f"{prefix}_mlp/~/linear_0"]["w"] + p[f"{prefix}_mlp/~/linear_0"]["b"]
        return _swish(h) @ p[f"{prefix}_mlp/~/linear_1"]["w"] + p[f"{prefix}_mlp/~/linear_1"]["b"]

    def cmlp(prefix, x):
        y = mlp(prefix, x)
        lin = p[f"{prefix}_norm_conditioning/linear"]
        so = cond @ lin["w"] + lin["b"]  # [B, 2F]
        scale, offset = so[:, : y.shape[-1]], so[:, y.shape[-1] :]
        return _ln(y) * (1 + scale) + offset

    lat = {}
    for ns in ("grid_nodes", "mesh_nodes"):
        x = nodes[ns]
        if x.ndim == 2:
            x = np.broadcast_to(x[:, None], (x.shape[0], B, x.shape[1]))
        lat[ns] = cmlp(f"encoder_nodes_{ns}", x) if embed else x
    e = cmlp(f"encoder_edges_{name.split('_')[0]}", np.broadcast_to(ef[:, None], (len(ef), B, 4)))
    edge_set = name.split("_")[0]
    new_e = cmlp(
        f"processor_edges_0_{edge_set}",
        np.concatenate([e, lat[sender][s], lat[receiver][r]], -1),
    )
    agg = np.zeros_like(lat[receiver])
    np.add.at(agg, r, new_e)
    upd = {}
    for ns in ("grid_nodes", "mesh_nodes"):
        inp = np.concatenate([lat[ns], agg], -1) if ns == receiver else lat[ns]
        upd[ns] = lat[ns] + cmlp(f"processor_nodes_0_{ns}", inp)
    if out is None:
        return upd
    return {ns: mlp(f"decoder_nodes_{ns}", upd[ns]) for ns in out}


@pytest.mark.parametrize("direction", ["grid2mesh", "mesh2grid"])
def test_gnn_matches_numpy_reference(direction):
    rng = np.random.default_rng(0)
    ng, nm, ne = 30, 7, 45
    if direction == "grid2mesh":
        kw = dict(
            sender_set="grid_nodes",
            receiver_set="mesh_nodes",
            embed_nodes=True,
            node_output_size=None,
        )
        nodes = {
            "grid_nodes": rng.standard_normal((ng, B, C)).astype(np.float32),
            "mesh_nodes": rng.standard_normal((nm, C)).astype(np.float32),
        }
        s, r = rng.integers(0, ng, ne), rng.integers(0, nm, ne)
    else:
        kw = dict(
            sender_set="mesh_nodes",
            receiver_set="grid_nodes",
            embed_nodes=False,
            node_output_size={"grid_nodes": 5},
        )
        nodes = {
            "grid_nodes": rng.standard_normal((ng, B, L)).astype(np.float32),
            "mesh_nodes": rng.standard_normal((nm, B, L)).astype(np.float32),
        }
        s, r = rng.integers(0, nm, ne), rng.integers(0, ng, ne)
    ef = rng.standard_normal((ne, 4)).astype(np.float32)
    cond = rng.standard_normal((B, 16)).astype(np.float32)
    name = f"{direction}_gnn"

    def fwd(nodes, ef, cond):
        return BipartiteInteractionGNN(
            edge_set=direction,
            latent_size=L,
            hidden_layers=1,
            f32_aggregation=True,
            aggregate_normalization=None,
            name=name,
            **kw,
        )(nodes, ef, s, r, cond)

    t = hk.without_apply_rng(hk.transform(fwd))
    params = jax.jit(t.init)(jax.random.key(0), nodes, ef, cond)
    params = jax.tree_util.tree_map(
        lambda a: (0.3 * rng.standard_normal(a.shape)).astype(np.float32), params
    )
    got = jax.jit(t.apply)(params, nodes, ef, cond)
    np_params = jax.tree_util.tree_map(np.asarray, params)
    want = reference(
        np_params, name, nodes, ef, s, r, cond,
        embed=kw["embed_nodes"], sender=kw["sender_set"], receiver=kw["receiver_set"],
        out=kw["node_output_size"],
    )  # fmt: skip
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)
    # The first edge-MLP layer has the shape of a Linear on the concatenation (official layout).
    w = params[f"{name}/~_networks_builder/processor_edges_0_{direction}_mlp/~/linear_0"]["w"]
    assert w.shape == (3 * L, L)


def test_conditioned_layer_norm_at_init_is_layer_norm():
    x = np.random.default_rng(1).standard_normal((5, B, 12)).astype(np.float32)
    cond = np.ones((B, 16), np.float32)
    t = hk.without_apply_rng(hk.transform(lambda x, c: conditioned_layer_norm(x, c, "n")))
    params = t.init(jax.random.key(0), x, cond)
    np.testing.assert_allclose(t.apply(params, x, cond), _ln(x), atol=1e-5)
    assert params["n/linear"]["w"].shape == (16, 24)
