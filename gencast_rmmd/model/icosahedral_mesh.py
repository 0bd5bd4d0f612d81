"""The icosahedral mesh of GenCast: one refinement level, banded node order.

GenCast (unlike GraphCast's multimesh) runs its transformer on the finest refined icosahedron
only. Each refinement splits every triangle in 4 through its edge midpoints, projected back onto
the unit sphere, so level r has 10*4^r + 2 vertices, 20*4^r faces and 60*4^r directed edges.

The nodes are finally renumbered with reverse Cuthill-McKee: the k-hop attention mask then has a
small bandwidth, which is what lets the banded (`triblockdiag_mha`) attention skip most of the
N x N logits and lets splash attention skip empty blocks. The node order changes no parameter.
All functions are numpy/scipy, deterministic and cached.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph


@dataclasses.dataclass(frozen=True, eq=False)
class TriangularMesh:
    """A closed triangular mesh on the unit sphere.

    Attributes:
      vertices: [V, 3] float64 unit vectors.
      faces: [F, 3] int32 vertex indices, counter-clockwise seen from outside (outward normals).
    """

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def num_vertices(self) -> int:
        return int(self.vertices.shape[0])


def _orient_outward(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    outward = np.einsum("ij,ij->i", np.cross(b - a, c - a), a + b + c) > 0
    return np.where(outward[:, None], faces, faces[:, [0, 2, 1]]).astype(np.int32)


def icosahedron() -> TriangularMesh:
    """The regular icosahedron on the unit sphere, rotated about the y axis so that one face is
    centred on the north pole (as GenCast's base mesh: a face on top, not a vertex)."""
    phi = (1.0 + np.sqrt(5.0)) / 2.0
    v = []
    for s1 in (1.0, -1.0):
        for s2 in (1.0, -1.0):
            v += [(0.0, s1, s2 * phi), (s1, s2 * phi, 0.0), (s2 * phi, 0.0, s1)]
    vertices = np.array(v) / np.sqrt(1.0 + phi**2)
    # Faces are the triples of mutually nearest vertices (edge length 2 before normalization).
    d = np.linalg.norm(vertices[:, None] - vertices[None], axis=-1)
    edge = d[d > 1e-9].min()
    adj = np.abs(d - edge) < 1e-9
    faces = [
        (i, j, k)
        for i in range(12)
        for j in range(i + 1, 12)
        for k in range(j + 1, 12)
        if adj[i, j] and adj[j, k] and adj[i, k]
    ]
    faces = np.array(faces, dtype=np.int32)
    assert faces.shape == (20, 3)
    # The face {(0,1,phi), (0,-1,phi), (phi,0,1)} has its centre in the x-z plane: rotate it about
    # y onto +z.
    centre = np.array([phi / 3.0, 0.0, (2.0 * phi + 1.0) / 3.0])
    angle = np.arctan2(centre[0], centre[2])  # rotate by -angle about y
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    vertices = vertices @ rot.T
    return TriangularMesh(vertices, _orient_outward(vertices, faces))


def split_mesh(mesh: TriangularMesh) -> TriangularMesh:
    """One refinement: each face -> 4 faces through its edge midpoints, projected to the sphere.

    New vertices are appended in order of first appearance, so the result is deterministic; the
    counter-clockwise orientation of every face is kept.
    """
    vertices = list(mesh.vertices)
    midpoint: dict[tuple[int, int], int] = {}

    def mid(i: int, j: int) -> int:
        key = (min(i, j), max(i, j))
        if key not in midpoint:
            p = mesh.vertices[i] + mesh.vertices[j]
            vertices.append(p / np.linalg.norm(p))
            midpoint[key] = len(vertices) - 1
        return midpoint[key]

    faces = []
    for a, b, c in mesh.faces.tolist():
        ab, bc, ca = mid(a, b), mid(b, c), mid(c, a)
        faces += [(a, ab, ca), (ab, b, bc), (ca, bc, c), (ab, bc, ca)]
    return TriangularMesh(np.array(vertices), np.array(faces, dtype=np.int32))


def faces_to_edges(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Directed edges (senders, receivers) 0->1, 1->2, 2->0 of every face.

    On a closed, consistently oriented surface every undirected edge appears once in each
    direction, so this gives 3 * F = 60 * 4^r directed edges.
    """
    senders = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    receivers = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    return senders.astype(np.int32), receivers.astype(np.int32)


def adjacency(mesh: TriangularMesh, self_edges: bool = False) -> scipy.sparse.csr_matrix:
    """Symmetric boolean [V, V] adjacency of the mesh edges (optionally with the diagonal)."""
    s, r = faces_to_edges(mesh.faces)
    n = mesh.num_vertices
    a = scipy.sparse.coo_matrix((np.ones(len(s), bool), (r, s)), shape=(n, n)).tocsr()
    if self_edges:
        a = (a + scipy.sparse.identity(n, dtype=bool, format="csr")).astype(bool)
    a.sum_duplicates()
    return a


def permute(mesh: TriangularMesh, order: np.ndarray) -> TriangularMesh:
    """Renumber vertices so that new vertex i is old vertex `order[i]`."""
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return TriangularMesh(mesh.vertices[order], inverse[mesh.faces].astype(np.int32))


@functools.lru_cache(maxsize=16)
def icosahedral_mesh(level: int, banded: bool = True) -> TriangularMesh:
    """The icosahedron refined `level` times (finest level only), cached.

    With `banded=True` (GenCast) the vertices are in reverse Cuthill-McKee order of the symmetric
    adjacency, which minimises the bandwidth of the k-hop attention mask.
    """
    if level < 0:
        raise ValueError(f"mesh level must be >= 0, found {level}")
    mesh = icosahedron()
    for _ in range(level):
        mesh = split_mesh(mesh)
    if banded:
        order = scipy.sparse.csgraph.reverse_cuthill_mckee(
            adjacency(mesh).astype(np.int8), symmetric_mode=True
        )
        mesh = permute(mesh, np.asarray(order))
    mesh.vertices.setflags(write=False)
    mesh.faces.setflags(write=False)
    return mesh


def max_edge_length(mesh: TriangularMesh) -> float:
    """Longest chord length of the mesh edges (unit sphere)."""
    s, r = faces_to_edges(mesh.faces)
    return float(np.linalg.norm(mesh.vertices[s] - mesh.vertices[r], axis=-1).max())


def k_hop_mask(mesh: TriangularMesh, k: int) -> scipy.sparse.csr_matrix:
    """Boolean [V, V] mask of pairs at most k mesh edges apart (self included): (A + I)^k.

    Computed by repeated squaring with a boolean threshold after each product, so entries never
    overflow. Symmetric because the adjacency is.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, found {k}")
    base = adjacency(mesh, self_edges=True).astype(np.float32)
    result = scipy.sparse.identity(mesh.num_vertices, dtype=np.float32, format="csr")
    while k:
        if k & 1:
            result = _binarize(result @ base)
        k >>= 1
        if k:
            base = _binarize(base @ base)
    out = result.astype(bool).tocsr()
    out.sort_indices()
    return out


def _binarize(m: scipy.sparse.csr_matrix) -> scipy.sparse.csr_matrix:
    m = m.tocsr()
    m.data[:] = 1.0
    return m


def mask_bandwidth(mask: scipy.sparse.spmatrix) -> int:
    """max |i - j| over the non-zeros (i, j): the block size of the banded attention."""
    coo = mask.tocoo()
    if coo.nnz == 0:
        return 0
    return int(np.abs(coo.row.astype(np.int64) - coo.col.astype(np.int64)).max())
