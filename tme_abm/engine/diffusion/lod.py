"""Implicit locally-one-dimensional (LOD) reaction-diffusion steps for many fields.

Each field ``u`` (F of them, on a regular 2D or 3D lattice with spacing ``dx``) obeys

    du/dt = D * laplacian(u) - lambda * u - U(x) * u + S(x)

with fixed-value (Dirichlet) voxels at vessels and, on each domain face, either a
fixed face value or no flux. One step of length ``dt``:

1. cell secretion: ``u <- u + dt*S`` at the cells' sites;
2. for each axis a, backward Euler in that axis only (LOD splitting, as BioFVM):
   ``(1 + dt*(lambda + U_i)/ndim) u_i - r (u_{i-1} - 2 u_i + u_{i+1}) = rhs_i`` with
   ``r = D*dt/dx^2``, solved along every line by the Thomas algorithm. Decay and cell
   uptake are split equally over the axes and sit on the matrix diagonal, so uptake is
   implicit *together with* diffusion: a voxel that consumes fast is refilled by its
   neighbours within the same solve (a split pointwise uptake would cap the effective
   rate near 1/dt). Coefficients are precomputed per dt for lines without cells; the
   fields that cells take up use per-voxel coefficients computed during the sweep.
   Vessel voxels are reset to their value before each axis sweep and at the end.

Every line solve is unconditionally stable and keeps concentrations non-negative
(the matrices are M-matrices). With no decay, no uptake and no-flux faces, mass is
conserved up to rounding (each column of the matrix sums to one). The splitting is
first order in dt; its steady state carries an O(dt) error (docs/architecture.md
gives measured numbers).

Replicates: with R > 1 the solver steps R independent copies of every field (a batch,
docs/architecture.md): each field's buffer row holds the copies one after another,
``(F, R, N)``, every line lies within one copy, and the per-field coefficients apply to
each copy alike, so copy r evolves exactly as a solver with R = 1 would step it.

Faces: a fixed face value ``c`` uses the ghost value ``2c - u_0`` so that ``u = c``
holds on the face itself (half a voxel outside the first voxel centre), which is
second-order accurate in space.

Algorithm layout (identical on CPU and GPU, so each CUDA kernel has a NumPy twin):
a sweep always runs along the buffer's *leading* spatial axis, which makes every line
operation a contiguous plane operation (CPU) or a coalesced load (GPU, one thread per
line). Between sweeps the buffer is written transposed into a second buffer so that
the next axis leads: viewing it as ``(F, n, W)`` with ``n`` the extent of the axes in
front of the next one, ``(F, n, W) -> (F, W, n)``. The axis order alternates between
steps (0, 1, 2, then 2, 1, 0, ...) so a step needs ``ndim - 1`` transposes, not
``ndim``; the buffer is therefore in one of ``ndim`` cyclic layouts between steps and
:attr:`LODSolver.values` presents it in canonical order as a view. Kernels:
``lod_sweep`` (Thomas along the leading axis of ``(F, n, W)``, all fields in one
launch), ``lod_sweep_sink`` (one field with per-voxel uptake on the diagonal) and
``lod_rotate`` (tiled transpose with a per-field scale), launched from :mod:`.cuda`;
their NumPy twins in :mod:`.thomas` are :func:`thomas_sweep_numpy`,
:func:`thomas_sweep_sink_numpy` and :func:`rotate_numpy`. The Thomas recurrence is
scaled (:mod:`.thomas`), so the buffer holds ``r*u`` after a sweep and the ``1/r`` is
folded into the transposing copy. (Fields with D = 0 are not diffusing and use
``u <- u / b`` instead.)
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..backend import Array, Backend, make_backend
from .cuda import SKIP, cuda_rotate, cuda_sweep, cuda_sweep_sink
from .grid import FieldGrid

try:
    from .fused_lod import thomas_columns
except ImportError:  # without Numba, the NumPy twin sweeps on the CPU too (slower)
    thomas_columns = None  # type: ignore[assignment]
from .thomas import (
    AxisCoefficients,
    axis_coefficients,
    rotate_numpy,
    scaled_thomas_passes,
    sink_coefficients_numpy,
    thomas_sweep_cp_numpy,
    thomas_sweep_numpy,
)

# Plane size (elements) a CPU block aims for: large enough that NumPy's per-call
# overhead is small, small enough that a block stays in the last-level cache.
_CPU_TARGET_PLANE = 40_000
# Planes (fields x lines) up to this size sweep fields with and without cell uptake in
# one pass (per-call overhead dominates there); larger ones sweep them apart.
_MERGE_MAX_PLANE = 2048
# Lattices with fewer voxel-fields than this run the CPU engine on one thread.
_CPU_THREAD_MIN = 1_000_000


@dataclass(frozen=True)
class Sources:
    """Per-cell secretion and uptake, applied implicitly at the cells' sites.

    Attributes:
        sites: (k,) int flat indices into the lattice (C order), one cell per site.
        secretion: (F, k) secretion rates, field units per minute.
        uptake: (F, k) uptake rates, 1/minute (first-order consumption).
        every_site: the sources list every site in order (``sites`` is ``arange(k)``, e.g.
            with a perfused field), so a solver copies them instead of scattering them.
    """

    sites: Array
    secretion: Array
    uptake: Array
    every_site: bool = False


# --------------------------------------------------------------------------------------
# The solver
# --------------------------------------------------------------------------------------


class LODSolver:
    """Implicit LOD reaction-diffusion of the fields of a :class:`~.grid.FieldGrid`.

    Args:
        grid: the fields' lattice, coefficients and boundaries.
        dt_min: field step, minutes.
        initial: scalar or (F,) initial value, or (F, *shape) (every replicate alike) or
            (F, R, *shape) initial fields.
        backend: where the arrays live (default NumPy float64).

    The current fields are :attr:`values`, an (F, R, *shape) array on the backend's device.
    """

    def __init__(self, grid: FieldGrid, dt_min: float, *, initial=0.0, backend: Backend | None = None):
        self.backend = backend or make_backend("numpy", "float64")
        self.grid = grid
        self.replicates = n_rep = grid.replicates
        xp = self.backend.xp
        self.shape = grid.shape
        self.ndim = grid.ndim
        self.spacing_um = grid.spacing_um
        self.diffusion = grid.diffusion_um2_per_min
        self.decay = grid.decay_per_min
        self.n_fields = nf = grid.n_fields
        nd = self.ndim
        self.face_values = grid.face_values
        self.dtype = self.backend.dtype
        self.n_sites = grid.n_sites  # of one replicate

        # Two buffers: sweeps write their transposed result into the other one.
        self._buf = [xp.empty((nf, n_rep * self.n_sites), dtype=self.dtype) for _ in range(2)]
        self._cur = 0
        init = np.asarray(initial, dtype=float)
        if init.ndim == 0 or init.shape == (nf,):
            self._buf[0][...] = xp.asarray(np.broadcast_to(init.reshape(-1, 1), (nf, 1)), self.dtype)
        else:  # (F, *shape), the same in every replicate, or (F, R, *shape)
            self._buf[0].reshape(nf, n_rep, self.n_sites)[...] = xp.asarray(
                init.reshape(nf, -1, self.n_sites), self.dtype)

        # Vessel voxels: one flat-index array per layout the buffer passes through.
        self._vessel_fields = np.zeros(0, dtype=np.int64)
        self._vessel_index: list = []
        self._vessel_vals: Array = None
        fixed = np.flatnonzero(~np.isnan(grid.vessel_values))
        if len(grid.vessel_sites) and len(fixed):
            for layout in range(nd):
                self._vessel_index.append(xp.asarray(self._site_index(grid.vessel_sites, layout)))
            self._vessel_fields = fixed
            self._vessel_fields_dev = xp.asarray(fixed)
            self._vessel_vals = xp.asarray(grid.vessel_values[fixed][:, None], self.dtype)
        self._lead = 0  # buffer layout: canonical axes in the order _layout_axes(_lead)
        self._apply_vessels(0, self._buf[0], range(nf))
        self._sink_scratch: dict[int, Array] = {}
        # (sites array, layout, buffer indices) of the last sample(); callers must not
        # modify a sites array in place after sampling with it
        self._last_sample: tuple[Array, int, Array] | None = None

        self._dt = 0.0  # no step yet: set_dt sets it
        self._coeffs: list[AxisCoefficients] = []
        self._dev_coeffs: list = []
        self._pool: ThreadPoolExecutor | _InlineExecutor | None = None
        self.set_dt(dt_min)

    # ---- public API ------------------------------------------------------------------

    @property
    def values(self):
        """Current fields, (F, R, *shape) array on the backend's device, in canonical axis
        order (a view of the internal buffer, which may be in a transposed layout;
        writable)."""
        perm = self._layout_axes(self._lead)
        v = self._buf[self._cur].reshape((self.n_fields, self.replicates, *(self.shape[a] for a in perm)))
        back = tuple(2 + (a - self._lead) % self.ndim for a in range(self.ndim))
        return v.transpose((0, 1, *back))

    def sample(self, sites, field: int | None = None):
        """Field values at canonical flat lattice indices ``sites`` ((k,) ints, replicate
        ``r``'s sites offset by ``r * n_sites``): (F, k), or (k,) of one ``field`` (index)."""
        xp = self.backend.xp
        last = self._last_sample
        if last is not None and last[0] is sites and last[1] == self._lead:
            idx = last[2]  # the same sites array again (e.g. one population, several fields)
        else:
            idx = self._site_index(xp.asarray(sites, dtype=xp.int64), self._lead)
            self._last_sample = (sites, self._lead, idx)
        buf = self._buf[self._cur]
        return buf[:, idx] if field is None else buf[field, idx]

    @property
    def dt_min(self) -> float:
        return self._dt

    def set_dt(self, dt_min: float) -> None:
        """Precompute the Thomas coefficients for a new field step (minutes)."""
        dt = float(dt_min)
        if not dt > 0:
            raise ValueError(f"dt_min must be > 0, got {dt_min}")
        if dt == self._dt:
            return
        r = self.diffusion * dt / self.spacing_um**2
        kappa = self.decay * dt / self.ndim
        self._coeffs = [
            axis_coefficients(
                self.shape[a], r, kappa, self.face_values[:, a, 0], self.face_values[:, a, 1], self.dtype
            )
            for a in range(self.ndim)
        ]
        if self.backend.is_gpu:
            # the kernels see F * R slabs (each replicate of each field): per-slab copies
            xp = self.backend.xp
            self._dev_coeffs = [
                {k: xp.asarray(np.repeat(getattr(c, k), self.replicates, axis=0))
                 for k in ("b", "cp", "rhs_lo", "rhs_hi", "invb", "scale", "diffusing")}
                for c in self._coeffs
            ]
        self._blocks = [self._plan_blocks(a) for a in range(self.ndim)]
        self._dt = dt

    def step(self, sources: Sources | None = None, n_steps: int = 1) -> None:
        """Advance all fields by ``n_steps * dt_min`` minutes.

        ``sources`` (per-cell secretion/uptake) are held fixed over the steps.
        """
        plan = self._source_plan(sources)
        for _ in range(n_steps):
            # Alternate the axis order so the step starts on the axis that already leads.
            order = list(range(self.ndim)) if self._lead == 0 else list(range(self.ndim - 1, -1, -1))
            self._apply_secretion(plan)
            if self.backend.is_gpu:
                self._sweeps_gpu(order, plan)
            else:
                self._sweeps_cpu(order, plan)

    def total_mass(self):
        """(F,) sum of each field over the lattice times voxel volume (host float64)."""
        vol = self.spacing_um**self.ndim
        return self.backend.to_host(self._buf[self._cur].sum(axis=1, dtype=np.float64)) * vol

    def get_state(self) -> tuple[np.ndarray, int]:
        """(F, R * n_sites) host copy of the internal buffer and its layout (the lead
        axis): with :meth:`set_state`, a solver continues bit for bit."""
        return self.backend.to_host(self._buf[self._cur]).copy(), int(self._lead)

    def set_state(self, buffer: np.ndarray, lead: int) -> None:
        if buffer.shape != (self.n_fields, self.replicates * self.n_sites) or not 0 <= lead < self.ndim:
            raise ValueError(f"solver state of shape {buffer.shape}, lead {lead} does not fit "
                             f"{self.n_fields} fields on {self.shape}")
        self._cur = 0
        self._buf[0][...] = self.backend.xp.asarray(buffer, dtype=self.dtype)
        self._lead = int(lead)
        self._last_sample = None

    def close(self) -> None:
        """Stop the helper thread of the CPU engine (also done at garbage collection)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ---- internals ---------------------------------------------------------------------

    def _layout_axes(self, lead: int) -> tuple[int, ...]:
        """Canonical axes in buffer order when axis ``lead`` leads (cyclic rotation)."""
        return tuple((lead + j) % self.ndim for j in range(self.ndim))

    def _site_index(self, sites, lead: int):
        """Flat buffer indices, in the layout led by ``lead``, of canonical flat ``sites``
        (each replicate's block of ``n_sites`` keeps its place)."""
        if lead == 0:
            return sites
        perm = self._layout_axes(lead)
        out = None if self.replicates == 1 else sites - sites % self.n_sites
        for j, a in enumerate(perm):
            stride = int(np.prod(self.shape[a + 1:]))
            new_stride = int(np.prod([self.shape[b] for b in perm[j + 1:]]))
            term = ((sites // stride) % self.shape[a]) * new_stride
            out = term if out is None else out + term
        return out

    def _apply_vessels(self, lead: int, buf, fields) -> None:
        if not self._vessel_index:
            return
        idx = self._vessel_index[lead]
        if isinstance(fields, range) and len(fields) == self.n_fields:  # all at once
            buf[self._vessel_fields_dev[:, None], idx[None, :]] = self._vessel_vals
            return
        for j, f in enumerate(self._vessel_fields):
            if f in fields:
                buf[f, idx] = self._vessel_vals[j]

    def _source_plan(self, s: Sources | None) -> dict:
        """Per-layout site indices, secretion increments and uptake diagonals for ``s``
        (none of them without cells)."""
        xp = self.backend.xp
        if s is None or int(s.sites.shape[0]) == 0:
            return {"index": None, "secretion": {}, "sinks": {}}
        sites = xp.asarray(s.sites, dtype=xp.int64)
        upt = xp.asarray(s.uptake, dtype=self.dtype)
        index = [self._site_index(sites, lead) for lead in range(self.ndim)]
        has_uptake = self.backend.to_host((upt > 0).any(axis=1))
        sec = xp.asarray(s.secretion, dtype=self.dtype)
        secreted = np.flatnonzero(self.backend.to_host((sec > 0).any(axis=1)))
        return {
            "index": index,
            "secretion": {int(f): sec[f] * self.dtype.type(self._dt) for f in secreted},
            "sinks": {int(f): upt[f] * self.dtype.type(self._dt / self.ndim) for f in np.flatnonzero(has_uptake)},
        }

    def _apply_secretion(self, plan: dict) -> None:
        buf = self._buf[self._cur]
        for f, amount in plan["secretion"].items():
            buf[f, plan["index"][self._lead]] += amount

    def _sink_diagonal(self, plan: dict, f: int, lead: int):
        """(R * N,) extra diagonal dt*U/ndim of field ``f`` in the layout led by ``lead``."""
        xp = self.backend.xp
        e = self._sink_scratch.get(f)
        if e is None:
            e = self._sink_scratch[f] = xp.empty(self.replicates * self.n_sites, dtype=self.dtype)
        e.fill(0)
        e[plan["index"][lead]] = plan["sinks"][f]
        return e

    def _sink_coefficients_cpu(self, plan: dict, f: int, axis: int):
        """(R, n, W) per-voxel coefficients of sink field ``f`` for sweeps of ``axis``:
        ``cp`` (diffusing) or ``1/(b + e)`` (D = 0). Computed once per source plan, since
        sources are fixed over the steps of one :meth:`step` call."""
        cache = plan.setdefault("cp", {})
        cp = cache.get((f, axis))
        if cp is None:
            c = self._coeffs[axis]
            n = self.shape[axis]
            cp = self._sink_diagonal(plan, f, axis).copy().reshape(self.replicates, n, self.n_sites // n)
            if c.diffusing[f]:
                sink_coefficients_numpy(cp, c.b[f], c.r[f])
            else:
                cp += c.b[f][:, None]
                np.divide(1.0, cp, out=cp)
            cache[(f, axis)] = cp
        return cp

    def _rotation(self, axis: int, nxt: int) -> int:
        """Extent ``n`` of the (F, n, W) -> (F, W, n) transpose that brings ``nxt`` to the
        front when ``axis`` leads."""
        p = (nxt - axis) % self.ndim
        return int(np.prod([self.shape[(axis + q) % self.ndim] for q in range(p)]))

    def _plan_blocks(self, axis: int) -> list[tuple[int, int, int, int]]:
        """CPU work blocks (f0, f1, w0, w1) for a sweep of ``axis`` (fields never mix
        diffusing and non-diffusing within a block)."""
        n = self.shape[axis]
        w_total = self.n_sites // n
        plane = self.replicates * w_total  # a field's plane: every replicate's lines
        diffusing = self._coeffs[axis].diffusing
        blocks = []
        f = 0
        while f < self.n_fields:
            g = f
            while g < self.n_fields and diffusing[g] == diffusing[f]:
                g += 1
            if plane >= _CPU_TARGET_PLANE // 2:
                n_chunks = min(w_total, max(1, round(plane / _CPU_TARGET_PLANE)))
                edges = np.linspace(0, w_total, n_chunks + 1).round().astype(int)
                for ff in range(f, g):
                    blocks += [(ff, ff + 1, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
            else:
                per = max(1, _CPU_TARGET_PLANE // plane)
                for ff in range(f, g, per):
                    blocks.append((ff, min(g, ff + per), 0, w_total))
            f = g
        return blocks

    def _sweep_block_cpu(self, src, axis: int, f0: int, f1: int, w0: int, w1: int, sinks: dict,
                         plan: dict) -> None:
        """Solve the lines of fields f0:f1, columns w0:w1 of ``src`` (F, R, n, W), in place."""
        c = self._coeffs[axis]
        n_rep = self.replicates
        if (1 < f1 - f0 and (f1 - f0) * n_rep * (w1 - w0) <= _MERGE_MAX_PLANE and c.diffusing[f0]
                and any(f in sinks for f in range(f0, f1))):
            # Several fields, some with cell uptake: one pass over all of them with
            # per-voxel coefficients (half the array calls of sweeping them apart).
            key = (axis, f0, w0)
            cpb = plan.setdefault("block_cp", {}).get(key)
            if cpb is None:
                cpb = np.empty((f1 - f0, n_rep, src.shape[2], w1 - w0), dtype=self.dtype)
                cpb[...] = c.cp[f0:f1, None, :, None]
                for f in range(f0, f1):
                    if f in sinks:
                        cpb[f - f0] = sinks[f][..., w0:w1]
                plan["block_cp"][key] = cpb = cpb.transpose(2, 0, 1, 3)  # (n, fg, R, w)
            block = src[f0:f1, :, :, w0:w1]
            n = block.shape[2]
            block[:, :, 0, :] += c.rhs_lo[f0:f1, None, None]
            block[:, :, n - 1, :] += c.rhs_hi[f0:f1, None, None]
            scaled_thomas_passes([block[:, :, i, :] for i in range(n)], cpb)
            return
        f = f0
        while f < f1:
            if f in sinks:
                v = src[f, :, :, w0:w1]
                if c.diffusing[f]:
                    thomas_sweep_cp_numpy(v, sinks[f][..., w0:w1], c.rhs_lo[f], c.rhs_hi[f])
                else:
                    v *= sinks[f][..., w0:w1]
                f += 1
                continue
            g = f + 1
            while g < f1 and g not in sinks:
                g += 1
            block = src[f:g, :, :, w0:w1]
            if not c.diffusing[f]:
                block *= c.invb[f:g, None, None, None]
            elif thomas_columns is not None:
                thomas_columns(src, c.cp, c.rhs_lo, c.rhs_hi, f, g, w0, w1)
            else:
                thomas_sweep_numpy(block, c.cp[f:g], c.rhs_lo[f:g], c.rhs_hi[f:g])
            f = g

    def _sweeps_cpu(self, order: list[int], plan: dict) -> None:
        """All axis sweeps on NumPy: the main thread sweeps block after block while a
        helper thread writes finished blocks, transposed, into the other buffer."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tme-lod") \
                if self.n_sites * self.n_fields >= _CPU_THREAD_MIN else _InlineExecutor()
        nf, N, n_rep = self.n_fields, self.n_sites, self.replicates
        pending: dict[int, list[Future]] = {f: [] for f in range(nf)}
        for j, axis in enumerate(order):
            c = self._coeffs[axis]
            n = self.shape[axis]
            w_total = N // n
            src_flat = self._buf[self._cur]
            src = src_flat.reshape(nf, n_rep, n, w_total)
            nxt = order[j + 1] if j + 1 < len(order) else None
            if nxt is not None:
                n_rot = self._rotation(axis, nxt)
                rot_src = src_flat.reshape(nf, n_rep, n_rot, N // n_rot)
                dst = self._buf[1 - self._cur].reshape(nf, n_rep, N // n_rot, n_rot)
            new_pending: dict[int, list[Future]] = {f: [] for f in range(nf)}
            sinks: dict = {}
            ready = set()
            for f0, f1, w0, w1 in self._blocks[axis]:
                for f in range(f0, f1):
                    if f not in ready:
                        for fut in pending[f]:
                            fut.result()
                        self._apply_vessels(axis, src_flat, (f,))
                        if f in plan["sinks"]:
                            sinks[f] = self._sink_coefficients_cpu(plan, f, axis)
                        ready.add(f)
                self._sweep_block_cpu(src, axis, f0, f1, w0, w1, sinks, plan)
                block = src[f0:f1, :, :, w0:w1]
                if nxt is None:  # last sweep of the step: undo the 1/r scaling in place
                    fut = self._pool.submit(_scale_inplace, block, c.scale[f0:f1])
                elif n_rot == n:  # the block maps to a block of the transposed buffer
                    fut = self._pool.submit(rotate_numpy, block, dst[f0:f1, :, w0:w1, :], c.scale[f0:f1])
                elif w1 == w_total:  # transpose whole fields once their last block is done
                    fut = self._pool.submit(rotate_numpy, rot_src[f0:f1], dst[f0:f1], c.scale[f0:f1])
                else:
                    continue
                for f in range(f0, f1):
                    new_pending[f].append(fut)
            pending = new_pending
            if nxt is not None:
                self._cur = 1 - self._cur
                self._lead = nxt
        for f in range(nf):
            for fut in pending[f]:
                fut.result()
        self._apply_vessels(self._lead, self._buf[self._cur], range(nf))

    def _sweeps_gpu(self, order: list[int], plan: dict) -> None:
        """All axis sweeps with the CUDA kernels (kernels/lod_sweep.cu, kernels/lod_rotate.cu)."""
        xp = self.backend.xp
        nf, N, n_rep = self.n_fields, self.n_sites, self.replicates
        slabs = nf * n_rep  # (field, replicate) pairs, each an (n, W) array to sweep
        sink_fields = sorted(plan["sinks"])
        for j, axis in enumerate(order):
            n = self.shape[axis]
            w_total = N // n
            self._apply_vessels(axis, self._buf[self._cur], range(nf))
            src = self._buf[self._cur]
            per_slab = src.reshape(nf, n_rep, N)
            c = self._dev_coeffs[axis]
            hc = self._coeffs[axis]
            kinds = c["diffusing"]
            if sink_fields:  # one host-to-device copy per axis and source plan, not per step
                kinds = plan.setdefault("kinds", {}).get(axis)
                if kinds is None:
                    k = hc.diffusing.copy()
                    k[sink_fields] = SKIP
                    kinds = plan["kinds"][axis] = xp.asarray(np.repeat(k, n_rep))
            cuda_sweep(self.backend, src, c["cp"], c["rhs_lo"], c["rhs_hi"], c["invb"], kinds, slabs, n, w_total)
            for f in sink_fields:
                e = self._sink_diagonal(plan, f, axis).reshape(n_rep, N)
                b = c["b"][f * n_rep]  # the field's diagonal (the same in each replicate)
                for r in range(n_rep):
                    if hc.diffusing[f]:
                        cuda_sweep_sink(self.backend, per_slab[f, r], e[r], b, hc.r[f], hc.rhs_lo[f], hc.rhs_hi[f],
                                        n, w_total)
                    else:
                        v = per_slab[f, r].reshape(n, w_total)
                        v /= e[r].reshape(n, w_total) + b[:, None]
            nxt = order[j + 1] if j + 1 < len(order) else None
            if nxt is None:
                src.reshape(slabs, N)[...] *= c["scale"][:, None]
            else:
                n_rot = self._rotation(axis, nxt)
                cuda_rotate(self.backend, src, self._buf[1 - self._cur], c["scale"], slabs, n_rot, N // n_rot)
                self._cur = 1 - self._cur
                self._lead = nxt
        self._apply_vessels(self._lead, self._buf[self._cur], range(nf))


class _InlineExecutor:
    """Runs submitted work at once: below _CPU_THREAD_MIN elements the helper thread's
    hand-offs cost more than the overlap gains."""

    class _Done:
        def result(self):
            return None

    def submit(self, fn, *args):
        fn(*args)
        return self._Done()

    def shutdown(self, wait: bool = True) -> None:
        pass


def _scale_inplace(block, scale) -> None:
    """``block[f] *= scale[f]`` for a (fg, R, n, w) block."""
    block *= scale[:, None, None, None]

