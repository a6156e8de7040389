"""Lattice geometry: shape, axis and face names, Moore neighbourhood offsets, vessel sites."""

from __future__ import annotations

import itertools

import numpy as np

VESSEL = -1
"""Occupancy code of a vessel site (no cell can sit there; free sites are 0, cells their
population's code)."""
FACES = ("zmin", "zmax", "ymin", "ymax", "xmin", "xmax")
"""Domain faces, low and high per axis, in C axis order (a 2D lattice has the last four)."""


def axis_names(ndim: int) -> tuple[str, ...]:
    """Names of the lattice axes in C order: ("y", "x") in 2D, ("z", "y", "x") in 3D."""
    return ("z", "y", "x")[3 - ndim:]


_TABLE_MAX_BYTES = 64 * 2**20  # neighbour tables up to this size are precomputed


class Lattice:
    """A regular 2D or 3D lattice of sites, one cell at most per site, in ``replicates``
    independent copies (a batch; 1 for a single run).

    A site's flat index is ``replicate * n_grid + i`` with ``i`` its C-order index within
    its copy: the replicate is a leading axis that no neighbourhood crosses, so every
    neighbour, move and contact stays within its replicate.

    Attributes:
        shape: sites per axis of one copy, C order ((y, x) or (z, y, x)).
        spacing_um: site spacing, micrometres.
        replicates: number of copies.
        n_grid: sites of one copy; n_sites: sites of all copies.
        offsets: (m, ndim) int Moore-neighbourhood offsets (m = 8 in 2D, 26 in 3D).
        vessel_sites: (k,) int64 flat indices of vessel sites, all copies (host array).
    """

    def __init__(self, shape, spacing_um: float, vessel_sites=None, replicates: int = 1):
        self.shape = tuple(int(s) for s in shape)
        self.ndim = len(self.shape)
        self.spacing_um = float(spacing_um)
        self.replicates = int(replicates)
        self.n_grid = int(np.prod(self.shape))
        self.n_sites = self.replicates * self.n_grid
        self.offsets = np.array(
            [o for o in itertools.product((-1, 0, 1), repeat=self.ndim) if any(o)], dtype=np.int64
        )
        self.vessel_sites = np.unique(np.asarray(vessel_sites if vessel_sites is not None else [], np.int64))
        self.strides = np.array([int(np.prod(self.shape[a + 1:])) for a in range(self.ndim)], dtype=np.int64)
        self._dev: dict = {}  # per array module: (shape, strides, offsets, flat offsets)

    def coords(self, sites) -> np.ndarray:
        """(k, ndim) integer coordinates of flat ``sites`` within their copy (host arrays)."""
        return np.stack(np.unravel_index(np.asarray(sites) % self.n_grid, self.shape), axis=1)

    def replicate_of(self, sites, xp=np):
        """(k,) int64 replicate of each flat site."""
        return xp.asarray(sites, dtype=xp.int64) // self.n_grid

    def constants(self, xp=np):
        """(shape, strides, offsets, flat_offsets) as int64 arrays of module ``xp``
        ((ndim,), (ndim,), (m, ndim), (m,); built once per module)."""
        c = self._dev.get(xp.__name__)
        if c is None:
            c = self._dev[xp.__name__] = (
                xp.asarray(self.shape, dtype=xp.int64), xp.asarray(self.strides),
                xp.asarray(self.offsets), xp.asarray(self.offsets @ self.strides),
            )
        return c

    def neighbours(self, sites, xp=np):
        """(k, m) flat indices of the Moore neighbours of ``sites``; -1 outside the site's
        copy of the lattice.

        Lattices whose neighbour table fits in ``_TABLE_MAX_BYTES`` look it up (one
        gather); larger ones compute it from coordinates."""
        shape, strides, offsets, flat_offsets = self.constants(xp)
        sites = xp.asarray(sites, dtype=xp.int64)
        key = ("table", xp.__name__)
        table = self._dev.get(key)
        if table is None and self.n_sites * len(self.offsets) * 4 <= _TABLE_MAX_BYTES:
            table = self._dev[key] = self._compute_neighbours(xp.arange(self.n_sites, dtype=xp.int64), xp) \
                .astype(xp.int32)
        if table is not None:
            return table[sites].astype(xp.int64)
        return self._compute_neighbours(sites, xp)

    def _compute_neighbours(self, sites, xp):
        shape, strides, offsets, flat_offsets = self.constants(xp)
        inside = None
        for a in range(self.ndim):
            c = (sites // int(self.strides[a])) % self.shape[a]  # (k,) coordinate along a
            ca = c[:, None] + offsets[None, :, a]
            ok = (ca >= 0) & (ca < self.shape[a])
            inside = ok if inside is None else inside & ok
        return xp.where(inside, sites[:, None] + flat_offsets[None, :], -1)

    def sphere_sites(self, center, radius: float) -> np.ndarray:
        """Flat indices within one copy of sites within ``radius`` (sites) of ``center`` (host)."""
        coords = np.indices(self.shape).reshape(self.ndim, -1)
        d2 = sum((coords[a] - center[a]) ** 2 for a in range(self.ndim))
        return np.flatnonzero(d2 <= radius**2)


def vessel_sites(shape, layout: str, rng: np.random.Generator, density: float = 0.0,
                 grid_spacing_sites: int = 10) -> np.ndarray:
    """(k,) int64 flat indices of vessel sites of a lattice of ``shape`` (C order).

    Args:
        layout: "random" (a fraction ``density`` of the sites, drawn with ``rng``),
            "grid" (every ``grid_spacing_sites`` sites along each axis), "boundary"
            (every site on a domain face) or "none".
    """
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape))
    if layout == "random":
        k = int(round(density * n))
        return rng.choice(n, size=k, replace=False) if k else np.zeros(0, np.int64)
    if layout == "grid":
        axes = [np.arange(grid_spacing_sites // 2, L, grid_spacing_sites) for L in shape]
        grid = np.meshgrid(*axes, indexing="ij")
        return np.ravel_multi_index(tuple(g.ravel() for g in grid), shape)
    if layout == "boundary":
        coords = np.indices(shape).reshape(len(shape), -1)
        on_face = np.zeros(n, bool)
        for a, L in enumerate(shape):
            on_face |= (coords[a] == 0) | (coords[a] == L - 1)
        return np.flatnonzero(on_face)
    if layout == "none":
        return np.zeros(0, np.int64)
    raise ValueError(f"vessel layout {layout!r} is not one of random, grid, boundary, none")
