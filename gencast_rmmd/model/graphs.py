"""The three graphs of the GenCast denoiser and their structural features (numpy/scipy, cached).

- grid2mesh: every (grid point, mesh node) pair whose chord distance is at most
  `radius_fraction` (0.6) x the longest mesh edge. 0.6 > 1/sqrt(3) ~ 0.577, the largest distance
  from a point of a near-equilateral triangle to its nearest vertex relative to the edge length,
  so every grid point reaches at least one mesh node.
- mesh: the k-hop neighbourhood (A + I)^k of the mesh adjacency, used as the attention mask.
- mesh2grid: each grid point receives from the 3 vertices of the mesh triangle containing it
  (the face intersected by the ray from the sphere's centre), so 3 x N_grid edges.

Structural features (reference notes §1.4): nodes get [sin(lat), cos(lon), sin(lon)]; an edge gets
[|d|, dx, dy, dz] where d = sender - receiver position after rotating both so that the receiver
sits at lat 0, lon 0 (its local frame), divided by the longest |d| of that edge set. Latitudes and
longitudes are rounded to float32 first, as upstream does.

Grid nodes are numbered latitude-major: node i = (lat index i // n_lon, lon index i % n_lon),
which matches `x.reshape(B, n_lat * n_lon, C)` of channels-last grid arrays.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.sparse
import scipy.spatial

from gencast_rmmd.model import icosahedral_mesh


def lat_lon_to_xyz(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """Unit vectors [..., 3] for latitudes/longitudes in degrees."""
    lat = np.deg2rad(np.asarray(lat_deg, np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, np.float64))
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def xyz_to_lat_lon(xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Latitude in [-90, 90] and longitude in [0, 360) degrees of vectors [..., 3]."""
    x, y, z = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    lat = np.rad2deg(np.arctan2(z, np.hypot(x, y)))
    lon = np.mod(np.rad2deg(np.arctan2(y, x)), 360.0)
    return lat, lon


def node_features(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """[N, 3] float32 node features: sin(lat) (= cos of the colatitude), cos(lon), sin(lon)."""
    lat = np.deg2rad(np.asarray(lat_deg, np.float32).astype(np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, np.float32).astype(np.float64))
    return np.stack([np.sin(lat), np.cos(lon), np.sin(lon)], axis=-1).astype(np.float32)


def rotation_to_local(lat_deg: np.ndarray, lon_deg: np.ndarray) -> np.ndarray:
    """[N, 3, 3] rotations taking the point (lat, lon) to (0, 0), i.e. to (1, 0, 0).

    First a rotation by -lon about z (to longitude 0), then by +lat about y (to the equator).
    """
    lat = np.deg2rad(np.asarray(lat_deg, np.float64))
    lon = np.deg2rad(np.asarray(lon_deg, np.float64))
    cz, sz = np.cos(-lon), np.sin(-lon)
    cy, sy = np.cos(lat), np.sin(lat)
    zero, one = np.zeros_like(lat), np.ones_like(lat)
    rz = np.stack(
        [
            np.stack([cz, -sz, zero], -1),
            np.stack([sz, cz, zero], -1),
            np.stack([zero, zero, one], -1),
        ],
        axis=-2,
    )
    ry = np.stack(
        [
            np.stack([cy, zero, sy], -1),
            np.stack([zero, one, zero], -1),
            np.stack([-sy, zero, cy], -1),
        ],
        axis=-2,
    )
    return ry @ rz


def edge_features(
    sender_lat: np.ndarray,
    sender_lon: np.ndarray,
    receiver_lat: np.ndarray,
    receiver_lon: np.ndarray,
    senders: np.ndarray,
    receivers: np.ndarray,
) -> np.ndarray:
    """[E, 4] float32 edge features [|d|, dx, dy, dz] in the receiver's local frame.

    d = R(receiver) (p_sender - p_receiver), R rotating the receiver to lat 0, lon 0; all four are
    divided by max |d| over the edge set (so the longest edge has length 1).
    """
    f32 = lambda a: np.asarray(a, np.float32).astype(np.float64)  # noqa: E731
    slat, slon, rlat, rlon = f32(sender_lat), f32(sender_lon), f32(receiver_lat), f32(receiver_lon)
    ps = lat_lon_to_xyz(slat[senders], slon[senders])
    pr = lat_lon_to_xyz(rlat[receivers], rlon[receivers])
    rot = rotation_to_local(rlat[receivers], rlon[receivers])
    d = np.einsum("eij,ej->ei", rot, ps - pr)
    norm = np.linalg.norm(d, axis=-1, keepdims=True)
    scale = norm.max() if norm.size else 1.0
    return (np.concatenate([norm, d], axis=-1) / scale).astype(np.float32)


def grid2mesh_edges(
    grid_xyz: np.ndarray, mesh: icosahedral_mesh.TriangularMesh, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """(senders = grid index, receivers = mesh index) of all pairs with chord distance <= radius,
    sorted by grid index then mesh index."""
    pairs = scipy.spatial.cKDTree(grid_xyz).sparse_distance_matrix(
        scipy.spatial.cKDTree(mesh.vertices), radius, output_type="ndarray"
    )
    order = np.lexsort((pairs["j"], pairs["i"]))
    return pairs["i"][order].astype(np.int32), pairs["j"][order].astype(np.int32)


def containing_faces(
    grid_xyz: np.ndarray, mesh: icosahedral_mesh.TriangularMesh, chunk: int = 131072
) -> np.ndarray:
    """[N] index of the mesh face containing each point (the face its radial ray crosses).

    The candidates are the faces around the 4 nearest vertices; the chosen face maximises the
    smallest of the three orientation tests det(a, b, p), det(b, c, p), det(c, a, p) (all >= 0
    for a point inside a counter-clockwise face), which also breaks ties on shared edges
    deterministically.
    """
    v, f = mesh.vertices, mesh.faces
    # vertex -> incident faces, padded with -1 (degree 5 or 6).
    order = np.argsort(f.ravel(), kind="stable")
    vert_of = f.ravel()[order]
    face_of = order // 3
    starts = np.searchsorted(vert_of, np.arange(len(v)))
    ends = np.searchsorted(vert_of, np.arange(len(v)), side="right")
    max_deg = int((ends - starts).max())
    vf = -np.ones((len(v), max_deg), np.int64)
    for j in range(max_deg):
        ok = starts + j < ends
        vf[ok, j] = face_of[starts[ok] + j]
    tree = scipy.spatial.cKDTree(v)
    if len(grid_xyz) > chunk:  # bounded memory on 0.25 deg grids
        return np.concatenate(
            [
                _containing_faces_chunk(grid_xyz[i : i + chunk], v, f, vf, tree)
                for i in range(0, len(grid_xyz), chunk)
            ]
        )
    return _containing_faces_chunk(grid_xyz, v, f, vf, tree)


def _containing_faces_chunk(grid_xyz, v, f, vf, tree) -> np.ndarray:
    # Edge-plane normals a x b, b x c, c x a of every face: p is inside iff all three dots >= 0.
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    normals = np.stack([np.cross(a, b), np.cross(b, c), np.cross(c, a)], axis=1)  # [F, 3, 3]
    _, near = tree.query(grid_xyz, k=min(4, len(v)))
    cand = vf[near].reshape(len(grid_xyz), -1)  # [N, 4*max_deg]
    valid = cand >= 0
    dots = np.einsum("nkij,nj->nki", normals[np.where(valid, cand, 0)], grid_xyz)
    score = np.where(valid, dots.min(axis=-1), -np.inf)
    best = np.argmax(score, axis=1)
    if np.any(score[np.arange(len(best)), best] < -1e-9):
        raise RuntimeError("a grid point lies in no candidate mesh face (mesh too coarse?)")
    return cand[np.arange(len(best)), best]


@dataclasses.dataclass(frozen=True, eq=False)
class DenoiserGraphs:
    """Everything structural the denoiser needs, as numpy arrays (constants inside jit).

    Attributes:
      n_lat, n_lon, n_grid, n_mesh: sizes (n_grid = n_lat * n_lon, latitude-major).
      grid_node_features: [n_grid, 3]; mesh_node_features: [n_mesh, 3] (float32).
      g2m_senders (grid idx), g2m_receivers (mesh idx), g2m_features [E_g2m, 4].
      m2g_senders (mesh idx), m2g_receivers (grid idx), m2g_features [3 n_grid, 4].
      mesh: the (banded-order) icosahedral mesh.
      attention_mask: [n_mesh, n_mesh] boolean CSR, (A + I)^k.
      block_size: banded-attention block size (mask bandwidth + 1, as upstream's).
    """

    n_lat: int
    n_lon: int
    n_mesh: int
    grid_node_features: np.ndarray
    mesh_node_features: np.ndarray
    g2m_senders: np.ndarray
    g2m_receivers: np.ndarray
    g2m_features: np.ndarray
    m2g_senders: np.ndarray
    m2g_receivers: np.ndarray
    m2g_features: np.ndarray
    mesh: icosahedral_mesh.TriangularMesh
    attention_mask: scipy.sparse.csr_matrix
    block_size: int

    @property
    def n_grid(self) -> int:
        return self.n_lat * self.n_lon

    def dense_attention_mask(self) -> np.ndarray:
        """[n_mesh, n_mesh] dense boolean k-hop mask."""
        return self.attention_mask.toarray()


def build_graphs(
    lat: np.ndarray,
    lon: np.ndarray,
    mesh_size: int,
    radius_fraction: float = 0.6,
    attention_k_hop: int = 16,
) -> DenoiserGraphs:
    """Build (or fetch from the cache) the denoiser graphs for a lat/lon grid in degrees.

    `lat` ascending, `lon` from 0 eastward (the project's grid convention).
    """
    return _build_graphs(
        tuple(float(x) for x in np.asarray(lat).ravel()),
        tuple(float(x) for x in np.asarray(lon).ravel()),
        int(mesh_size),
        float(radius_fraction),
        int(attention_k_hop),
    )


@functools.lru_cache(maxsize=8)
def _build_graphs(
    lat: tuple[float, ...],
    lon: tuple[float, ...],
    mesh_size: int,
    radius_fraction: float,
    attention_k_hop: int,
) -> DenoiserGraphs:
    lat_a, lon_a = np.asarray(lat), np.asarray(lon)
    n_lat, n_lon = len(lat_a), len(lon_a)
    glat = np.repeat(lat_a, n_lon).astype(np.float32)
    glon = np.tile(lon_a, n_lat).astype(np.float32)
    grid_xyz = lat_lon_to_xyz(glat, glon)

    mesh = icosahedral_mesh.icosahedral_mesh(mesh_size)
    mlat, mlon = xyz_to_lat_lon(mesh.vertices)
    mlat, mlon = mlat.astype(np.float32), mlon.astype(np.float32)

    radius = radius_fraction * icosahedral_mesh.max_edge_length(mesh)
    g2m_s, g2m_r = grid2mesh_edges(grid_xyz, mesh, radius)
    faces = containing_faces(grid_xyz, mesh)
    m2g_s = mesh.faces[faces].reshape(-1).astype(np.int32)  # 3 per grid point, grid-major
    m2g_r = np.repeat(np.arange(n_lat * n_lon), 3).astype(np.int32)

    mask = icosahedral_mesh.k_hop_mask(mesh, attention_k_hop)
    graphs = DenoiserGraphs(
        n_lat=n_lat,
        n_lon=n_lon,
        n_mesh=mesh.num_vertices,
        grid_node_features=node_features(glat, glon),
        mesh_node_features=node_features(mlat, mlon),
        g2m_senders=g2m_s,
        g2m_receivers=g2m_r,
        g2m_features=edge_features(glat, glon, mlat, mlon, g2m_s, g2m_r),
        m2g_senders=m2g_s,
        m2g_receivers=m2g_r,
        m2g_features=edge_features(mlat, mlon, glat, glon, m2g_s, m2g_r),
        mesh=mesh,
        attention_mask=mask,
        block_size=icosahedral_mesh.mask_bandwidth(mask) + 1,
    )
    for name in (
        "grid_node_features",
        "mesh_node_features",
        "g2m_senders",
        "g2m_receivers",
        "g2m_features",
        "m2g_senders",
        "m2g_receivers",
        "m2g_features",
    ):
        getattr(graphs, name).setflags(write=False)
    return graphs
