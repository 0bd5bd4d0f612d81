"""GenCast's grid2mesh and mesh2grid GNNs: one-step interaction networks on a bipartite graph.

Both are GraphCast-style encode-process-decode nets on two node sets (`grid_nodes`, `mesh_nodes`)
and one edge set, as configured by GenCast (reference notes §1.5):

- encoder: an MLP per node set (optional) and for the edges, each followed by a LayerNorm without
  affine and a `LinearNormConditioning` on the noise embedding;
- one processor step: edge update MLP([edge, sender, receiver]), node update
  MLP([node, sum of received messages]) for the receiving set and MLP([node]) for the other set,
  each conditioned likewise, with residual connections on nodes and edges;
- decoder (optional): an MLP per output node set, no norm, no conditioning.

Latents are laid out [nodes, batch, features], so a node gather works on the leading axis and the
[batch, 2F] conditioning broadcasts over nodes. Haiku module paths equal the official checkpoint
keys (`<gnn>/~_networks_builder/<encoder|processor|decoder>_..._mlp/~/linear_i`,
`..._norm_conditioning/linear`): the sub-modules are created in the method `_networks_builder`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from gencast_rmmd.model.noise_encoder import LinearNormConditioning, layer_norm

NODE_SETS = ("grid_nodes", "mesh_nodes")


class _GatheredLinear(hk.Module):
    """A Linear on concat([x_0[idx_0], x_1[idx_1], ...]) computed as sum_i (x_i @ W_i)[idx_i].

    Same parameters (`w` [sum d_i, out], `b`) and init as `hk.Linear` on the concatenation, but
    node inputs are projected before the gather onto the edges: no [E, B, 3L] concatenation, and
    a third of the edge FLOPs when a node set is much smaller than the edge set (the mesh).
    """

    def __init__(self, output_size: int, name: str):
        super().__init__(name=name)
        self._out = output_size

    def __call__(self, parts: list[tuple[jax.Array, np.ndarray | None]]) -> jax.Array:
        sizes = [x.shape[-1] for x, _ in parts]
        dtype = parts[0][0].dtype
        w = hk.get_parameter(
            "w",
            [sum(sizes), self._out],
            dtype,
            init=hk.initializers.TruncatedNormal(stddev=1.0 / np.sqrt(sum(sizes))),
        )
        b = hk.get_parameter("b", [self._out], dtype, init=jnp.zeros)
        out = None
        start = 0
        for (x, idx), d in zip(parts, sizes):
            y = jnp.dot(x, w[start : start + d])
            start += d
            if idx is not None:
                y = y[jnp.asarray(idx)]
            out = y if out is None else out + y
        return out + b


class _GatheredMLP(hk.Module):
    """`hk.nets.MLP`-compatible (same names `linear_i`, swish between layers) whose first layer is
    a `_GatheredLinear`."""

    def __init__(self, sizes: list[int], name: str):
        super().__init__(name=name)
        self._layers = [_GatheredLinear(sizes[0], name="linear_0")] + [
            hk.Linear(n, name=f"linear_{i}") for i, n in enumerate(sizes[1:], start=1)
        ]

    def __call__(self, parts: list[tuple[jax.Array, np.ndarray | None]]) -> jax.Array:
        h = self._layers[0](parts)
        for layer in self._layers[1:]:
            h = layer(jax.nn.swish(h))
        return h


class _ConditionedMLP:
    """MLP -> LayerNorm (no affine) -> LinearNormConditioning, or a bare MLP (decoders)."""

    def __init__(self, prefix: str, sizes: list[int], conditioned: bool, gathered: bool = False):
        if gathered:
            self._mlp = _GatheredMLP(sizes, name=f"{prefix}_mlp")
        else:
            self._mlp = hk.nets.MLP(sizes, activation=jax.nn.swish, name=f"{prefix}_mlp")
        self._cond = (
            LinearNormConditioning(name=f"{prefix}_norm_conditioning") if conditioned else None
        )

    def __call__(self, x, conditioning: jax.Array) -> jax.Array:
        y = self._mlp(x)
        if self._cond is None:
            return y
        return self._cond(layer_norm(y), conditioning)


class BipartiteInteractionGNN(hk.Module):
    """One-step GraphCast interaction network between `grid_nodes` and `mesh_nodes`.

    Args:
      edge_set: "grid2mesh" or "mesh2grid" (the edge-set name in the parameter paths).
      sender_set, receiver_set: node-set names.
      latent_size: width L of all latents and hidden layers; hidden_layers: hidden layers per MLP.
      embed_nodes: embed raw node features (grid2mesh) or take latents as given (mesh2grid).
      node_output_size: {node set: output width} for the decoder, or None (no decoder).
      f32_aggregation: sum messages in float32.
      aggregate_normalization: divide the message sums by this constant (None: no division).
    """

    def __init__(
        self,
        *,
        edge_set: str,
        sender_set: str,
        receiver_set: str,
        latent_size: int,
        hidden_layers: int,
        embed_nodes: bool,
        node_output_size: Mapping[str, int] | None,
        f32_aggregation: bool,
        aggregate_normalization: float | None,
        name: str,
    ):
        super().__init__(name=name)
        self._edge_set = edge_set
        self._sender_set = sender_set
        self._receiver_set = receiver_set
        self._latent = latent_size
        self._hidden = [latent_size] * hidden_layers
        self._embed_nodes = embed_nodes
        self._node_output_size = dict(node_output_size or {})
        self._f32_aggregation = f32_aggregation
        self._aggregate_normalization = aggregate_normalization

    def _networks_builder(self) -> dict[str, Callable]:
        # Created in this method so that Haiku names them `<gnn>/~_networks_builder/...`, the
        # official checkpoint layout.
        sizes = self._hidden + [self._latent]
        nets: dict[str, Callable] = {}
        if self._embed_nodes:
            for ns in NODE_SETS:
                nets[f"encoder_nodes_{ns}"] = _ConditionedMLP(f"encoder_nodes_{ns}", sizes, True)
        nets["encoder_edges"] = _ConditionedMLP(f"encoder_edges_{self._edge_set}", sizes, True)
        nets["processor_edges"] = _ConditionedMLP(
            f"processor_edges_0_{self._edge_set}", sizes, True, gathered=True
        )
        for ns in NODE_SETS:
            nets[f"processor_nodes_{ns}"] = _ConditionedMLP(f"processor_nodes_0_{ns}", sizes, True)
        for ns, out in self._node_output_size.items():
            nets[f"decoder_nodes_{ns}"] = _ConditionedMLP(
                f"decoder_nodes_{ns}", self._hidden + [out], False
            )
        return nets

    def __call__(
        self,
        nodes: Mapping[str, jax.Array],
        edge_features: np.ndarray,
        senders: np.ndarray,
        receivers: np.ndarray,
        conditioning: jax.Array,
    ) -> dict[str, jax.Array]:
        """Run the net.

        Args:
          nodes: {node set: [N, B, F] or [N, F] (batch-independent, broadcast over B)}; raw
            features if `embed_nodes`, else [N, B, L] latents.
          edge_features: [E, 4] structural features; senders/receivers: [E] node indices into the
            sender/receiver sets.
          conditioning: [B, C] noise embedding.
        Returns:
          {node set: [N, B, L] latents} after the processor step, or the decoded outputs
          [N, B, out] for the sets in `node_output_size`.
        """
        nets = self._networks_builder()
        cond = conditioning  # [B, C]: broadcasts against [N, B, F] after the linear map
        batch = conditioning.shape[0]

        def with_batch(x: jax.Array) -> jax.Array:
            return x[:, None, :] if x.ndim == 2 else x

        latents = {}
        for ns in NODE_SETS:
            x = nodes[ns]
            if self._embed_nodes:
                # Batch-independent features (mesh nodes) are embedded once, then broadcast.
                x = nets[f"encoder_nodes_{ns}"](with_batch(x), cond)
            latents[ns] = jnp.broadcast_to(with_batch(x), (x.shape[0], batch, self._latent))
        edges = nets["encoder_edges"](jnp.asarray(edge_features)[:, None, :], cond)

        # Processor: one interaction step. The edge MLP sees concat([edge, sender, receiver]);
        # its first layer projects the node latents before gathering them onto the edges.
        new_edges = nets["processor_edges"](
            [
                (edges, None),
                (latents[self._sender_set], senders),
                (latents[self._receiver_set], receivers),
            ],
            cond,
        )
        msg = new_edges.astype(jnp.float32) if self._f32_aggregation else new_edges
        n_recv = latents[self._receiver_set].shape[0]
        agg = jax.ops.segment_sum(msg, jnp.asarray(receivers), num_segments=n_recv)
        if self._aggregate_normalization is not None:
            agg = agg / self._aggregate_normalization
        agg = agg.astype(new_edges.dtype)

        updated = {}
        for ns in NODE_SETS:
            inp = latents[ns]
            if ns == self._receiver_set:
                inp = jnp.concatenate([inp, agg], axis=-1)
            updated[ns] = latents[ns] + nets[f"processor_nodes_{ns}"](inp, cond)

        if not self._node_output_size:
            return updated
        return {ns: nets[f"decoder_nodes_{ns}"](updated[ns], cond) for ns in self._node_output_size}
