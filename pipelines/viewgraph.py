"""View-graph check of the mapping step: drop verified pairs whose rotation disagrees with the rest.

Why: on scenes with repeated structure (two walls of one courtyard, both sides of a symmetric
building) a dense matcher finds a smooth, confident, epipolar-consistent warp between views that
share nothing, and such a pair passes every two-view test.
Incremental mapping then glues the two walls together. A wrong pair is, however, inconsistent with
the chains of right pairs around it: robust rotation averaging over all verified pairs puts every
image where most of its pairs agree, and a pair whose relative rotation is far from that consensus
is left out (``mapping.import_matches``: its matches stay in the database, its two-view geometry is
not written). A pair on no cycle of the view graph (a bridge) keeps a residual of 0: nothing
contradicts it.

Method: the rotations are initialised along a maximum spanning tree of the pair weights (the
inlier counts: a look-alike pair has fewer inliers than the right pairs of its images), then
refined by iteratively reweighted chordal averaging, one closed-form update per image and sweep.
An edge's weight is its Cauchy weight of the angular residual times its share of the largest pair
weight; the Cauchy scale shrinks from 90 deg to ``scale`` deg (graduated non-convexity) so that a
wrong edge of the initial tree cannot hold its image. The mapping step's threshold (30 deg) sits
far above what a guessed focal length does to a right pair's rotation (a few to ~25 deg for wide
baselines at 1.2 x the image size) and far below what a view of another wall gives.
"""
from __future__ import annotations

import numpy as np


def rotation_angle(R: np.ndarray) -> np.ndarray:
    """Angle in degrees of rotation matrices R (..., 3, 3)."""
    c = (np.trace(R, axis1=-2, axis2=-1) - 1.0) / 2.0
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def _project_so3(M: np.ndarray) -> np.ndarray:
    """Nearest rotation (Frobenius) to each M (..., 3, 3)."""
    U, _, Vt = np.linalg.svd(M)
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def _spanning_tree_init(num_nodes: int, edges: np.ndarray, rotations: np.ndarray, weights: np.ndarray
                        ) -> np.ndarray:
    """Absolute rotations chained along a maximum spanning forest (Kruskal) of ``weights``."""
    parent = list(range(num_nodes))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    adj: list[list[tuple[int, np.ndarray]]] = [[] for _ in range(num_nodes)]
    for e in np.argsort(-weights, kind="stable"):
        i, j = int(edges[e, 0]), int(edges[e, 1])
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        parent[ri] = rj
        adj[i].append((j, rotations[e]))  # R_j = R_ij R_i
        adj[j].append((i, rotations[e].T))
    R = np.tile(np.eye(3), (num_nodes, 1, 1))
    seen = np.zeros(num_nodes, bool)
    for root in range(num_nodes):
        if seen[root]:
            continue
        seen[root], stack = True, [root]
        while stack:
            a = stack.pop()
            for b, Rab in adj[a]:
                if not seen[b]:
                    R[b], seen[b] = Rab @ R[a], True
                    stack.append(b)
    return R


def average_rotations(num_nodes: int, edges: np.ndarray, rotations: np.ndarray, weights: np.ndarray,
                      iterations: int = 30, scale: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """Robust rotation averaging.

    edges: (E, 2) node indices (i, j); rotations: (E, 3, 3) relative rotations with R_j = R_ij R_i
    (COLMAP's cam2_from_cam1); weights: (E,) confidence of each pair (> 0; the initial tree, and a
    factor of every robust weight).
    Returns the absolute rotations (N, 3, 3) (one gauge per connected component) and each edge's
    residual angle |R_j R_i^T R_ij^T| in degrees (E,).
    """
    edges = np.asarray(edges, np.int64).reshape(-1, 2)
    rotations = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    if len(edges) == 0:
        return np.tile(np.eye(3), (num_nodes, 1, 1)), np.zeros(0)
    weights = np.asarray(weights, np.float64)
    R = _spanning_tree_init(num_nodes, edges, rotations, weights)
    conf = weights / weights.max()
    i, j = edges[:, 0], edges[:, 1]

    def residuals(R: np.ndarray) -> np.ndarray:
        return rotation_angle(R[j] @ np.transpose(R[i], (0, 2, 1)) @ np.transpose(rotations, (0, 2, 1)))

    # graduated non-convexity: the Cauchy scale shrinks from 90 deg (near least squares, which pulls
    # an image off a wrong tree edge towards the majority of its pairs) to ``scale``
    for sigma in np.geomspace(90.0, scale, iterations):
        w = conf / (1.0 + (residuals(R) / sigma) ** 2)
        # argmin_Rj sum_e w_e |R_j - R_ij R_i|^2 (and the same for i): project the weighted sum;
        # the current estimate is added once so that an image whose pairs all vanish stays put
        M = R.copy()
        np.add.at(M, j, w[:, None, None] * (rotations @ R[i]))
        np.add.at(M, i, w[:, None, None] * (np.transpose(rotations, (0, 2, 1)) @ R[j]))
        R = _project_so3(M)
    return R, residuals(R)

