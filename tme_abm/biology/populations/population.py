"""The struct-of-arrays store shared by the four populations.

A population is one ``mesa.Agent`` that holds every cell of its type as columns of
equal length on the backend's device (``site``, ``id`` and the population's own
state). Adding cells appends, removing cells compacts; both are vectorised and keep
the model's occupancy grid in step (at most one cell per site).
"""

from __future__ import annotations

from typing import ClassVar

import mesa
import numpy as np

from ...engine import rng as crng
from ...engine.backend import Array
from ...engine.moves import choose, free_neighbours, resolve_conflicts
from ..host import PER_REPLICATE_RATES, Host
from ..rules import RuleSet


def rate_to_prob(rate_per_min, dt_min: float, xp=np):
    """Per-tick event probability for a Poisson rate: ``1 - exp(-rate * dt)``."""
    return -xp.expm1(-xp.asarray(rate_per_min) * dt_min)


def occurs(u, rate_per_min, dt_min: float, xp=np):
    """(n,) bool ``u < 1 - exp(-rate * dt)``, exactly, but evaluating the exponential
    only where ``u < rate * dt`` (a necessary condition, since 1 - e^-x <= x): most
    events are rare, and expm1 is the costly part on large populations.

    Args:
        u: (n,) uniforms; rate_per_min: a host scalar, or (n,) (or 0-d) device rates.
    """
    if isinstance(rate_per_min, int | float):  # one exponential, on the host
        return u < float(-np.expm1(-rate_per_min * dt_min))
    x = xp.broadcast_to(xp.asarray(rate_per_min) * dt_min, u.shape)
    out = u < x * (1.0 + 1e-12)
    idx = xp.flatnonzero(out)
    if idx.size:
        out[idx] = u[idx] < -xp.expm1(-x[idx])
    return out



def index_mask(xp, n: int, idx):
    """(n,) bool array, true at the indices ``idx``."""
    mask = xp.zeros(n, dtype=bool)
    mask[idx] = True
    return mask

class Population(mesa.Agent):
    """All cells of one type.

    Subclasses set ``kind`` (config section), ``code`` (occupancy value, > 0),
    ``streams`` (their random-number purposes, registered under ``code`` with
    :func:`tme_abm.engine.rng.streams`), ``behaviours`` (what their rules may
    modulate), ``state_signals_named`` (cell-state signals their rules may read) and
    ``columns`` (name -> (dtype, fill value)) for their own state; ``site`` (int64 flat
    lattice index) and ``id`` (int64, the key of every random draw: the cell's id,
    unique within the population and replicate for the whole run, in the low
    :data:`~tme_abm.engine.rng.ID_BITS` bits and the replicate above them, see
    :func:`~tme_abm.engine.rng.key_of`) are always present.
    """

    model: Host
    kind: ClassVar[str]
    code: ClassVar[int]
    streams: ClassVar[crng.Streams]
    behaviours: ClassVar[tuple[str, ...]]
    """Behaviours the population's rules may modulate (besides secrete_<field> and
    uptake_<field>)."""
    state_signals_named: ClassVar[tuple[str, ...]] = ()
    columns: ClassVar[dict[str, tuple[str, float]]] = {}
    key_columns: ClassVar[tuple[str, ...]] = ()
    """Columns holding other cells' ids (keys with their replicate), -1 for none."""
    supplied_signals: ClassVar[frozenset[str]] = frozenset()
    """Signals only the caller can give (``extra`` of :meth:`factor`), never sensed."""

    def __init__(self, model: Host, params, rules: RuleSet):
        super().__init__(model)
        self.xp = model.backend.xp
        self.params = params
        self.rules = rules
        self.next_id = np.zeros(model.lattice.replicates, dtype=np.int64)
        """(R,) the next cell id of each replicate (host)."""
        self.data = {"site": self.xp.zeros(0, self.xp.int64), "id": self.xp.zeros(0, self.xp.int64)}
        for name, (dtype, _fill) in self.columns.items():
            self.data[name] = self.xp.zeros(0, dtype=dtype)
        self._version = 0  # bumped whenever cells are added, removed or moved
        self._env: dict = {}
        self._env_version = -1
        self.events = {"born": 0, "arrived": 0, "died": 0, "cleared": 0, "left": 0}
        """Cells of each fate this tick, all replicates together (zeroed every tick)."""
        self._rates: dict[str, Array] = {}
        """(R,) device values of the rates in which the replicates' configs differ."""
        for key in PER_REPLICATE_RATES:
            section, name = key.split(".")
            if section == self.kind:
                values = [getattr(getattr(rep.config, section), name) for rep in model.replicas]
                if any(v != values[0] for v in values):
                    self._rates[name] = self.xp.asarray(np.array(values, dtype=np.float64))

    def rate(self, name: str, idx: Array | None = None):
        """The parameter ``name`` of this population for the cells ``idx`` ((k,) indices;
        default all): the config's float where every replicate has the same value, else
        (k,) each cell's replicate's value (:data:`~tme_abm.config.schema.PER_REPLICATE_RATES`)."""
        values = self._rates.get(name)
        if values is None:
            return getattr(self.params, name)
        sites = self.data["site"] if idx is None else self.data["site"][idx]
        return values[self.model.lattice.replicate_of(sites, self.xp)]

    def __len__(self) -> int:
        return int(self.data["site"].shape[0])

    def __getattr__(self, name):
        data = self.__dict__.get("data")
        if data is not None and name in data:
            return data[name]
        raise AttributeError(name)

    # ---- adding and removing cells ---------------------------------------------------

    def add(self, sites: Array, how: str = "born", **values) -> None:
        """Append cells at free ``sites`` ((k,) flat); unspecified columns get their fill."""
        xp = self.xp
        sites = xp.asarray(sites, dtype=xp.int64)
        k = int(sites.shape[0])
        if k == 0:
            return
        # New cells get their ids in site order, not in the order they were computed:
        # ids key every later random draw, so they must not depend on memory order.
        # Sites sort by replicate first; ids count on within each replicate.
        order = xp.argsort(sites)
        sites = sites[order]
        lattice = self.model.lattice
        if lattice.replicates == 1:
            counts = np.array([k])
            ids = xp.arange(self.next_id[0], self.next_id[0] + k, dtype=xp.int64)
        else:
            rep = lattice.replicate_of(sites, xp)
            counts = np.bincount(self.model.backend.to_host(rep), minlength=lattice.replicates)
            first = np.cumsum(counts) - counts  # index of each replicate's first new cell
            local = xp.arange(k, dtype=xp.int64) - xp.asarray(first - self.next_id)[rep]
            ids = crng.key_of(rep, local, xp)
        new = {"site": sites, "id": ids}
        for name, (dtype, fill) in self.columns.items():
            v = values.pop(name, None)
            if v is None:
                new[name] = xp.full(k, fill, dtype=dtype)
            else:
                v = xp.asarray(v, dtype=dtype)
                new[name] = v[order] if v.ndim else xp.full(k, v, dtype=dtype)
        if values:
            raise KeyError(f"{self.kind}: unknown columns {sorted(values)}")
        self.next_id += counts
        self._version += 1
        for name, col in new.items():
            self.data[name] = xp.concatenate([self.data[name], col])
        self.model.occupancy[new["site"]] = self.code
        self.events[how] += k

    def remove(self, mask: Array, how: str = "died") -> int:
        """Remove the cells where ``mask`` ((n,) bool) is true; free their sites."""
        n = int(self.model.backend.to_host(mask.sum()))  # the compacted length: a host value
        if n == 0:
            return 0
        self.model.occupancy[self.data["site"][mask]] = 0
        self._version += 1
        keep = ~mask
        for name in self.data:
            self.data[name] = self.data[name][keep]
        self.events[how] += n
        return n

    def arrivals_at_vessels(self, rate_per_vessel_per_min, behaviour: str, purpose: str, cells: float | None = None):
        """(k,) sites for cells arriving from blood this tick: each vessel site releases one
        cell with probability ``1 - exp(-rate * factor * dt)`` (factor: this population's
        rules for ``behaviour`` with the signals at the vessel) into a random free
        neighbour. The caller adds the cells.

        With ``cells`` (the patient's vessels a lattice vessel stands for), each vessel
        site releases a Poisson number of patient cells of mean ``cells * rate * factor *
        dt``, and ``(vessel, counts, target)`` is returned for the vessels that release
        any ((k,) each: the index into the model's vessel sites, the cells, the free site
        won for them or -1).

        Args:
            rate_per_vessel_per_min: a scalar, or (R,) per replicate (host).
        """
        m = self.model
        xp = self.xp
        vessels = m.vessels_dev
        rate = np.asarray(rate_per_vessel_per_min, dtype=float)
        if not (rate > 0).any() or int(vessels.shape[0]) == 0:
            none = xp.zeros(0, dtype=xp.int64)
            return none if cells is None else (none, xp.zeros(0, dtype=xp.float64), none)
        if rate.ndim:  # per replicate: each vessel gets its replicate's rate
            rate = xp.asarray(rate)[m.lattice.replicate_of(vessels, xp)]
        cache: dict = {}
        signals = {n: m.sense_signal(n, vessels, cache) for n in self.rules.behaviour_signals(behaviour)}
        factor = self.rules.factor(behaviour, signals)
        if cells is None:
            prob = -xp.expm1(-rate * factor * m.dt_min)
            go = crng.uniform(xp, m.seeds, m.steps, self.streams(purpose), m.vessel_keys) < prob
        else:  # parts 5 and 6 (its normal approximation), apart from the choice's and the conflicts'
            count = crng.poisson(xp, m.seeds, m.steps, self.streams(purpose, part=5), m.vessel_keys,
                                 cells * rate * factor * m.dt_min)
            go = count > 0
        src, keys = vessels[go], m.vessel_keys[go]
        target = choose(m, free_neighbours(m, src), keys, self.streams(purpose, part=1))
        win = resolve_conflicts(m, target, keys, self.streams(purpose, part=2))
        if cells is None:
            return target[win]
        return xp.flatnonzero(go), count[go], xp.where(win, target, -1)

    def moved(self, sites: Array) -> None:
        """Take ``sites`` ((n,), a new array) as the cells' sites; the caller has updated
        the occupancy grid (the compiled walk)."""
        self.data["site"] = sites
        self._version += 1

    def move_to(self, idx: Array, sites: Array) -> None:
        """Move cells ``idx`` to free ``sites`` (both (k,))."""
        occ = self.model.occupancy
        occ[self.data["site"][idx]] = 0
        occ[sites] = self.code
        site = self.data["site"].copy()  # a new array: samplers may key caches on identity
        site[idx] = sites
        self.data["site"] = site
        self._version += 1

    def index_of(self, ids: Array) -> Array:
        """(k,) positions of the cells with ``ids``, -1 for ids no longer present."""
        xp = self.xp
        ids = xp.asarray(ids, dtype=xp.int64)
        if len(self) == 0:
            return xp.full(ids.shape, -1, dtype=xp.int64)
        order = xp.argsort(self.data["id"])
        sorted_ids = self.data["id"][order]
        pos = xp.minimum(xp.searchsorted(sorted_ids, ids), len(self) - 1)
        return xp.where(sorted_ids[pos] == ids, order[pos], -1)

    def reset_events(self) -> None:
        """Start a tick: zero the event counters and forget the sensed environment (a
        tick never reuses what was sensed in an earlier one, so a model restored from
        a checkpoint continues exactly)."""
        for k in self.events:
            self.events[k] = 0
        self._env = {}
        self._env_version = -1

    # ---- checkpoints -----------------------------------------------------------------

    def get_state(self, replicate: int) -> tuple[dict[str, np.ndarray], dict]:
        """(columns as host arrays (copies), JSON-able scalars) of this population's cells
        in ``replicate``, with sites and ids as a single run of that replicate has them."""
        to_host = self.model.backend.to_host
        lattice = self.model.lattice
        cols = {k: np.array(to_host(v), copy=True) for k, v in self.data.items()}
        mine = cols["site"] // lattice.n_grid == replicate
        cols = {k: v[mine] for k, v in cols.items()}
        cols["site"] -= replicate * lattice.n_grid
        for k in ("id", *self.key_columns):
            cols[k] = np.where(cols[k] >= 0, cols[k] & ((1 << crng.ID_BITS) - 1), cols[k])
        return cols, {"next_id": int(self.next_id[replicate])}

    def set_state(self, states: list[tuple[dict[str, np.ndarray], dict]]) -> None:
        """Replace every cell by the cells of ``states``, one per replicate (as from
        :meth:`get_state`). The caller rebuilds the occupancy grid."""
        n_grid = self.model.lattice.n_grid
        for columns, _meta in states:
            if set(columns) != set(self.data):
                raise ValueError(f"{self.kind}: checkpoint columns {sorted(columns)} != {sorted(self.data)}")
        cols = {}
        for k in self.data:
            parts = [np.asarray(c[k]) for c, _ in states]
            if k == "site":
                parts = [p + r * n_grid for r, p in enumerate(parts)]
            elif k == "id" or k in self.key_columns:
                parts = [np.where(p >= 0, crng.key_of(r, p), p) for r, p in enumerate(parts)]
            cols[k] = self.xp.asarray(np.concatenate(parts), dtype=self.data[k].dtype)
        self.data = cols
        self.next_id = np.array([int(meta["next_id"]) for _, meta in states], dtype=np.int64)
        self._version += 1
        self._env = {}
        self._env_version = -1

    # ---- random numbers and rules ----------------------------------------------------

    def uniform(self, purpose: str, ids=None, n_slots: int | None = None, part: int = 0):
        """Counter-based uniforms for this tick, keyed by cell id (or given ids), from this
        population's stream ``purpose`` (and ``part``, :attr:`streams`)."""
        m = self.model
        return crng.uniform(self.xp, m.seeds, m.steps, self.streams(purpose, part=part),
                            self.data["id"] if ids is None else ids, n_slots)

    def draw(self, idx, base_rate_per_min: float, behaviour: str, purpose: str, scale=None):
        """The cells among ``idx`` ((k,) indices) for which an event of rate
        ``base_rate * factor(behaviour)`` (times ``scale``, (k,) values in [0, 1], if
        given) happens this tick: exactly ``u < 1 - exp(-rate * dt)`` with u keyed by
        cell id, but the rules are evaluated only for cells whose u is below the largest
        possible probability (rare events on large populations cost a comparison, not a
        Hill function per cell)."""
        xp, dt = self.xp, self.model.dt_min
        u = self.uniform(purpose, self.data["id"][idx])
        bound = base_rate_per_min * self.rules.max_factor(behaviour) * dt
        cand = xp.flatnonzero(u < bound * (1.0 + 1e-12))
        if cand.size == 0:
            return cand
        rate = base_rate_per_min * self.factor(behaviour, idx[cand])
        if scale is not None:
            rate = rate * scale[cand]
        return idx[cand[occurs(u[cand], rate, dt, xp)]]

    def factor(self, behaviour: str, idx=None, extra: dict | None = None, cache: dict | None = None):
        """(k,) rule factor of ``behaviour`` for cells ``idx`` ((k,) int indices; default
        all). Signals come from :meth:`signal`, except those given in ``extra`` (values
        for exactly those cells, e.g. the engaged target's antigen). ``cache`` shares
        Hill values between behaviours evaluated on the same cells."""
        sig = {}
        for name in self.rules.behaviour_signals(behaviour):
            if extra is not None and name in extra:
                sig[name] = extra[name]
            else:
                v = self.signal(name)
                sig[name] = v if idx is None else v[idx]
        product = self.data.get("product")
        if product is not None and idx is not None:
            product = product[idx]
        return self.rules.factor(behaviour, sig, product, cache)

    def sense(self) -> None:
        """The sensing stage: read every environment signal the rules use (fields at the
        cells' sites, neighbour counts), for all cells."""
        self._env = {}
        self._env_version = self._version
        state = self.state_signals()
        for name in sorted(self.rules.signals_needed() - self.supplied_signals):
            if name not in state:
                self._env_signal(name)

    def signal(self, name: str):
        """(n,) values of signal ``name`` per cell: the cell's own state, or its
        environment as sensed this tick (read again if cells were added, removed or
        moved since)."""
        state = self.state_signals()
        return state[name] if name in state else self._env_signal(name)

    def _env_signal(self, name: str):
        if self._env_version != self._version:
            self._env = {}
            self._env_version = self._version
        v = self._env.get(name)
        if v is None:
            v = self._env[name] = self.model.sense_signal(name, self.data["site"], self._env)
        return v

    def state_signals(self) -> dict:
        """Cell-state signals the rules may use (overridden by populations that have any)."""
        return {}

    # ---- what the population reports and emits ---------------------------------------

    def counts(self) -> dict:
        """Reported counts, each an (R,) int64 device array, per replicate."""
        return {f"{self.kind}_cells": self.model.count(self)}

    def snapshot(self) -> dict:
        """Per-cell columns of a cell snapshot, (n,) device arrays: ``state`` (int8 code,
        see docs/output.md), ``lineage`` (int64, -1: none), ``antigen`` and ``exhaustion``
        (float32, NaN where the type has none). Overridden where a type has them."""
        xp, n = self.xp, len(self)
        return {"state": xp.zeros(n, dtype=xp.int8), "lineage": xp.full(n, -1, dtype=xp.int64),
                "antigen": xp.full(n, xp.nan, dtype=xp.float32),
                "exhaustion": xp.full(n, xp.nan, dtype=xp.float32)}

    def fill_sources(self, sec, upt, secretion: np.ndarray, uptake: np.ndarray) -> None:
        """Write this population's secretion and uptake rates into ``sec`` and ``upt``
        ((F, n) views, zero on entry; one column per cell, in memory order).

        Args:
            secretion, uptake: (F,) base rates of this cell type per field.
        """
        names = self.model.fields.names
        on = self.emission().astype(sec.dtype)  # cells that do not emit get zero rates
        cache: dict = {}  # e.g. the hypoxia Hill value behind several secretion rules
        for f, name in enumerate(names):
            if secretion[f] > 0:
                sec[f] = (secretion[f] * on) * self.factor(f"secrete_{name}", cache=cache) \
                    * self.secretion_gate(name)
            if uptake[f] > 0:
                upt[f] = (uptake[f] * on) * self.factor(f"uptake_{name}", cache=cache)

    def emission(self):
        """(n,) float64: each cell's secretion and uptake in units of one cell of the
        lattice's weight (1 for every cell, unless overridden; 0: none)."""
        return self.xp.ones(len(self), dtype=self.xp.float64)

    def secretion_gate(self, field: str):
        """Multiplier (n,) or scalar gating a field's secretion (1: always secreted)."""
        return 1.0

