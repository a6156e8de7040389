"""The config schema: every section of a run config as a pydantic model, with defaults,
allowed ranges and the checks that need several keys at once (docs/config.md).

Every key is checked (unknown keys, wrong types, out-of-range and physically impossible
values are refused). Fields, rule modulators and gene edits default to the biology's
tables (``tme_abm/biology/data``); a config may change any of their keys, declare new
fields and add edits.
"""

from __future__ import annotations

import copy
import difflib
import math
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ..biology.defaults import default_edits, default_fields, default_rules, parameter
from ..biology.host import PER_REPLICATE_RATES
from ..biology.perfusion import max_density_per_mm2
from ..biology.populations import BEHAVIOURS, CELL_TYPES, CONTACT_TYPES, STATE_SIGNALS
from ..engine.diffusion import quasi_steady
from ..engine.lattice import FACES, Lattice
from ..engine.moves import mean_step_sites


class Strict(BaseModel):
    """Base of every schema model: unknown keys are errors, numbers are numbers (no
    booleans or strings coerced) and finite (no NaN or infinity)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


PosFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
NonNegFloat = Annotated[float, Field(ge=0)]
Level = Annotated[float, Field(ge=0, le=1e9)]
"""A field's value (any of its units): bounded so that float32 fields stay finite."""
MIN_DIFFUSION = 1e-3
"""Smallest nonzero diffusion coefficient, um^2/min (below it the solver's scaled line
solves leave the float range; such a field does not diffuse in any run's time anyway)."""
MAX_TICKS = 10_000_000
"""The most ticks a run may have (3650 days at a 0.5-min tick)."""
MAX_MOVES_PER_TICK = 100
"""The most lattice moves a cell may make in one tick (speed x tick / spacing)."""


class VesselConfig(Strict):
    """Where vessel sites are: oxygen sources and entry points from blood."""

    layout: Literal["random", "grid", "boundary", "none"] = "random"
    """random (a share ``density`` of the sites), grid (every ``grid_spacing_sites``), boundary (every face site) or
    none."""
    density: Annotated[float, Field(ge=0, le=1)] = 0.01
    """Fraction of sites that are vessels (layout: random)."""
    grid_spacing_sites: Annotated[int, Field(ge=2)] = 10
    """Sites between vessels along each axis (layout: grid)."""


class PerfusionConfig(Strict):
    """The capillary bed below the lattice's resolution: microvessel densities that supply
    the perfused fields (``fields.<name>.perfused``) through a Krogh-cylinder exchange
    term (docs/model.md, "Perfusion")."""

    normal_per_mm2: Annotated[float, Field(ge=0)] = parameter("lattice.perfusion.normal_per_mm2")
    """Microvessels per mm^2 in normal tissue or marrow (capillaries crossing the plane)."""
    tumor_per_mm2: Annotated[float, Field(ge=0)] = parameter("lattice.perfusion.tumor_per_mm2")
    """Microvessels per mm^2 inside the initial solid lesion (archetypes solid and bulky)."""
    capillary_radius_um: Annotated[float, Field(gt=0, le=50)] = parameter("lattice.perfusion.capillary_radius_um")

    @model_validator(mode="after")
    def _cylinders_fit(self):
        top = max_density_per_mm2(self.capillary_radius_um)
        for key in ("normal_per_mm2", "tumor_per_mm2"):
            if getattr(self, key) > top:
                raise ValueError(f"{key} {getattr(self, key):g}: at most {top:.0f} microvessels per mm^2 fit "
                                 f"Krogh cylinders around capillaries of radius {self.capillary_radius_um:g} um")
        return self


class LatticeConfig(Strict):
    dims: Literal[2, 3] = 2
    """2D or 3D."""
    shape: list[Annotated[int, Field(ge=3, le=100_000)]] = [100, 100]
    """Sites per axis, C order: [y, x] in 2D, [z, y, x] in 3D."""
    spacing_um: Annotated[float, Field(ge=1, le=1000)] = 20.0
    """Site spacing in micrometres (about one cell diameter)."""
    vessels: VesselConfig = VesselConfig()
    perfusion: PerfusionConfig = PerfusionConfig()

    @model_validator(mode="after")
    def _shape_matches_dims(self):
        if len(self.shape) != self.dims:
            raise ValueError(f"shape {self.shape} has {len(self.shape)} entries but dims is {self.dims}")
        return self


class TimeConfig(Strict):
    tick_min: Annotated[float, Field(ge=0.01, le=1440)] = 6.0
    """Agent tick, minutes of simulated time."""
    duration_days: Annotated[float, Field(gt=0, le=3650)] = 1.0
    """Simulated days from the first therapy event (or day 0), after the burn-in."""
    burn_in_days: Annotated[float, Field(ge=0, le=365)] = 0.0
    """Days simulated before the first therapy event with no therapy, so that the lesion,
    its fields and its myeloid cells reach their steady state before treatment (the run
    starts at the first event's day minus this)."""
    field_substeps: Annotated[int, Field(ge=1, le=1000)] = 1
    """Field steps per field solve (field step = fields_every_ticks * tick_min / field_substeps)."""
    fields_every_ticks: Annotated[int, Field(ge=1, le=1000)] = 1
    """Solve the fields every k ticks, over k ticks at once (the solver is implicit, so
    this is stable; the cells' sources are those of the last tick before the solve)."""
    field_tolerance: Annotated[float, Field(ge=1e-10, le=1e-2)] = 1e-4
    """Relative residual at which a multigrid field solve (fields.<name>.scheme steady or
    implicit) stops; the field errs by about 2e-4 of its boundary value at 1e-4."""

    @property
    def n_ticks(self) -> int:
        return int(math.ceil((self.burn_in_days + self.duration_days) * 1440.0 / self.tick_min - 1e-9))

    @model_validator(mode="after")
    def _duration_covers_a_tick(self):
        if self.n_ticks > MAX_TICKS:
            raise ValueError(f"duration_days {self.duration_days} at tick_min {self.tick_min} is {self.n_ticks} "
                             f"ticks; at most {MAX_TICKS:,} are allowed")
        if self.duration_days * 1440.0 < self.tick_min:
            raise ValueError(
                f"duration_days {self.duration_days} is shorter than one tick ({self.tick_min} min)"
            )
        return self


class FaceBC(Strict):
    kind: Literal["noflux", "dirichlet"] = "noflux"
    """noflux, or dirichlet (the face held at ``value``)."""
    value: Level = 0.0
    """Fixed face value (kind: dirichlet), field units."""


class BoundaryConfig(Strict):
    """Boundary condition per domain face; ``default`` applies to faces not named."""

    default: FaceBC = FaceBC()
    zmin: FaceBC | None = None
    """A face other than ``default`` (zmin ... xmax; zmin and zmax in 3D only)."""
    zmax: FaceBC | None = None
    """As ``zmin``."""
    ymin: FaceBC | None = None
    """As ``zmin``."""
    ymax: FaceBC | None = None
    """As ``zmin``."""
    xmin: FaceBC | None = None
    """As ``zmin``."""
    xmax: FaceBC | None = None
    """As ``zmin``."""

    def face(self, name: str) -> FaceBC:
        return getattr(self, name) or self.default


class FieldConfig(Strict):
    """One reaction-diffusion field."""

    new: bool = False
    """Declares a field that is not one of the defaults (a name that is neither is refused,
    so a misspelt default cannot add a field by accident)."""
    enabled: bool = True
    """false removes the field, the default rules that read or write it and the default chemotaxis up it."""
    units: str = "1"
    """UDUNITS-2 units written to run files ("1": relative, no physical unit)."""
    diffusion_um2_per_min: Annotated[float, Field(ge=0, le=1e8)] = 1000.0
    """Diffusion coefficient, um^2/min (0: the field does not diffuse)."""
    decay_per_min: Annotated[float, Field(ge=0, le=1e6)] = 0.0
    """First-order decay, 1/min."""
    initial: Level = 0.0
    """Initial value everywhere, field units."""
    vessel_value: Level | None = None
    """Value held at vessel sites (null: vessels do not fix this field)."""
    perfused: bool = False
    """Exchanged with blood (at ``vessel_value``) through the microvessels of every site
    (``lattice.perfusion``; a Krogh-cylinder term, docs/model.md "Perfusion")."""
    boundary: BoundaryConfig = BoundaryConfig()
    secretion_per_min: dict[Literal[CELL_TYPES], Annotated[float, Field(ge=0, le=1e4)]] = {}
    """Secretion per cell type, field units per minute."""
    uptake_per_min: dict[Literal[CELL_TYPES], Annotated[float, Field(ge=0, le=1e6)]] = {}
    """First-order uptake per cell type, 1/minute."""
    scheme: Literal["auto", "steady", "implicit", "lod"] = "auto"
    """How the field is solved (docs/architecture.md): ``steady`` (its steady state given
    the cells, at every field solve), ``implicit`` (unsplit backward Euler, one multigrid
    solve per field step), ``lod`` (the LOD step: cheapest, first-order errors at cell
    uptake and vessels), or ``auto``: steady when the field relaxes by 95% within one
    field solve (decay plus the slowest diffusive mode, D (pi/L)^2 if vessels or faces
    fix it, L the mean vessel spacing or the lattice's extent, times tick_min x
    fields_every_ticks >= 3); else implicit when it diffuses (the LOD step errs by
    percents at point sources after one field solve); else (D = 0) lod."""
    substeps: Annotated[int, Field(ge=1, le=1000)] = 1
    """Backward-Euler steps the field takes per field step when its scheme is implicit
    (the other schemes take one): more for a field whose sources switch on and off
    faster than the field step, like the cytokine of engaged CAR T (``tme-abm bench
    fields`` measures each field's error against a converged reference)."""

    @model_validator(mode="after")
    def _diffuses_or_not(self):
        if self.perfused and (self.vessel_value is None or self.diffusion_um2_per_min == 0):
            raise ValueError("perfused: true needs a vessel_value (the blood's value) and a diffusing field")
        if 0 < self.diffusion_um2_per_min < MIN_DIFFUSION:
            raise ValueError(f"diffusion_um2_per_min {self.diffusion_um2_per_min:g}: use 0 (a field that does not "
                             f"diffuse) or at least {MIN_DIFFUSION:g}")
        return self


class ModulatorConfig(Strict):
    """One rule modulator: a Hill function of a signal that multiplies a behaviour rate.

    ``H = s^n / (K^n + s^n)`` (``1 - H`` with ``low: true``: the effect grows as the
    signal falls). Factor: ``1 + max_effect * H`` (direction up, max_effect = fold
    increase - 1) or ``1 - max_effect * H`` (direction down, max_effect in [0, 1]: the
    fraction removed at saturation).
    """

    enabled: bool = True
    """false switches a default modulator off."""
    signal: str
    """A field name (value at the cell's site), ``contact:<type>`` (Moore neighbours of
    tumor, car_t, car_t_engaged, monocyte or granulocyte) or a cell-state signal."""
    direction: Literal["up", "down"]
    """up: the factor is ``1 + max_effect * H``; down: ``1 - max_effect * H``."""
    low: bool = False
    """true: H falls as the signal rises (``1 - H``), so the effect grows as the signal falls."""
    half_max: Annotated[float, Field(ge=1e-12, le=1e12)]
    """Signal at which H is one half (the signal's units)."""
    hill_power: Annotated[float, Field(gt=0, le=64)] = 1.0
    """Hill power n of ``H = s^n / (K^n + s^n)``."""
    max_effect: Annotated[float, Field(ge=0, le=1e4)]
    """Fold increase - 1 at saturation (up), or the share removed at saturation (down, at most 1)."""

    @model_validator(mode="after")
    def _effect_range(self):
        if self.direction == "down" and self.max_effect > 1:
            raise ValueError(f"max_effect {self.max_effect}: a 'down' modulator removes at most 1 (all)")
        return self


Rules = dict[str, dict[str, ModulatorConfig]]


class EditConfig(Strict):
    """A gene edit: modulator names removed from, or changed in, every CAR T behaviour."""

    remove: list[str] = []
    """Names of CAR T modulators removed from every behaviour."""
    change: dict[str, dict[str, Any]] = {}
    """Modulator name -> keys set on it in every behaviour (e.g. ``{hypoxia: {max_effect: 0.1}}``)."""


class _Population(Strict):
    """Shared by the four populations: rules merged over the defaults."""

    rules: Rules = {}

    @model_validator(mode="before")
    @classmethod
    def _merge_default_rules(cls, data: Any):
        return _merged_over_defaults(data, "rules", default_rules()[cls.kind])


Bias = Annotated[float, Field(ge=0, le=50)]


class MoveConfig(Strict):
    """A population's walk; each population's subclass gives its defaults."""

    speed_um_per_min: NonNegFloat
    chemotaxis_field: str | None
    """Field whose gradient biases the walk (null: unbiased)."""
    chemotaxis_bias: Bias
    """Strength of the bias: move weights exp(bias * cos(angle to the gradient)); 0 is an
    unbiased walk, 50 all but forbids moves down the gradient."""


class CarTMove(MoveConfig):
    speed_um_per_min: NonNegFloat = parameter("car_t.move.speed_um_per_min")
    chemotaxis_bias: Bias = parameter("car_t.move.chemotaxis_bias")
    chemotaxis_field: str | None = "cxcl10"


class MonocyteMove(MoveConfig):
    speed_um_per_min: NonNegFloat = parameter("monocyte.move.speed_um_per_min")
    chemotaxis_bias: Bias = parameter("monocyte.move.chemotaxis_bias")
    chemotaxis_field: str | None = "ccl2"


class GranulocyteMove(MoveConfig):
    speed_um_per_min: NonNegFloat = parameter("granulocyte.move.speed_um_per_min")
    chemotaxis_bias: Bias = parameter("granulocyte.move.chemotaxis_bias")
    chemotaxis_field: str | None = "cxcl8"


class AntigenConfig(Strict):
    mean: Annotated[float, Field(ge=0, le=1)] = parameter("tumor.antigen.mean")
    sd: NonNegFloat = parameter("tumor.antigen.sd")
    negative_fraction: Annotated[float, Field(ge=0, le=1)] = parameter("tumor.antigen.negative_fraction")
    """Frequency of pre-existing antigen-negative cells in the patient's disease at the
    start: this x the patient's tumor cells are antigen-negative, placed in the sample
    as agents of its weight (and one agent for the remainder), so their number grows
    with burden (docs/model.md, "Rare cells")."""
    inheritance_sd: NonNegFloat = parameter("tumor.antigen.inheritance_sd")
    """Noise added to a daughter's antigen density."""
    loss_per_division: Annotated[float, Field(ge=0, le=1)] = parameter("tumor.antigen.loss_per_division")
    """Probability that a daughter loses the antigen (antigen escape; docs/model.md
    derives the clinical timescale of months from it)."""
    negative_below: Fraction = parameter("tumor.antigen.negative_below")
    """Antigen density below which an alive cell is antigen-negative (bystander killing
    takes such cells; the ``tumor_antigen_negative`` count)."""
    high_from: Fraction = parameter("tumor.antigen.high_from")
    """Antigen density from which an alive cell counts as antigen-high (between the two:
    antigen-low; the ``tumor_antigen_*`` counts)."""

    @model_validator(mode="after")
    def _classes_ordered(self):
        if not self.negative_below <= self.high_from:
            raise ValueError(f"negative_below {self.negative_below:g} must not exceed high_from {self.high_from:g}")
        return self


class TumorConfig(_Population):
    """Initial tumor and its behaviour rates (per minute; modulated by ``rules``)."""

    kind: ClassVar[str] = "tumor"
    archetype: Literal["solid", "dispersed", "bulky"] = "solid"
    """solid: a disc/ball; dispersed: scattered cells; bulky: a solid mass inside
    dispersed disease (extramedullary/bulky hematologic disease)."""
    radius_sites: Annotated[float, Field(gt=0)] = 8.0
    """Spheroid radius in sites (archetypes solid and bulky)."""
    center_sites: list[float] | None = None
    """Centre of the spheroid in site coordinates, C order ([y, x] or [z, y, x]); null:
    the middle of the lattice."""
    initial_cells: Annotated[int, Field(ge=0)] = 200
    """Cells scattered uniformly (archetypes dispersed and bulky), one agent of
    ``patient.burden_scale`` patient cells each."""
    burden_cells: Annotated[float, Field(gt=0, le=1e13)] | None = None
    """Dispersed disease: the patient's tumor cells at the start, which set the sample
    in place of ``initial_cells``: ``max(1, round(burden_cells / burden_scale))`` agents
    share them, so the sample's infiltration follows the patient's (docs/model.md, "The
    sample follows the patient")."""
    antigen: AntigenConfig = AntigenConfig()
    divide_per_min: NonNegFloat = parameter("tumor.divide_per_min")
    """Division rate at low density in full oxygen (~1/day): the cap of the Gompertz birth
    rate (biology/growth.py)."""
    doubling_days: PosFloat = parameter("tumor.doubling_days")
    """Doubling time of the disease at the start (net of cell loss), which sets the
    Gompertz rate where ``gompertz_per_min`` is null."""
    capacity_fold: Annotated[float, Field(ge=1, le=1e6)] = parameter("tumor.capacity_fold")
    """Carrying capacity K over the niche's cells at the start (tumor plus normal
    marrow): the disease grows towards K (1: a disease at its steady state)."""
    gompertz_per_min: NonNegFloat | None = None
    """Gompertz rate alpha: the birth rate is ``apoptosis + alpha ln(K/N)``, capped at
    ``divide_per_min`` (Norton 1988; docs/model.md, "Growth"); null: ``ln 2 /
    (doubling_days ln(capacity_fold))``, the disease doubling in ``doubling_days`` at
    the start."""
    carrying_capacity_cells: Annotated[int, Field(gt=0)] | None = None
    """Carrying capacity K of a replicate's lattice, in cells of the lattice's weight
    (tumor plus normal marrow); null: ``capacity_fold`` x the initial tumor agents plus
    ``marrow_normal_cells`` (with neither, no limit but space)."""
    marrow_normal_cells: NonNegFloat = 0.0
    """Normal marrow cells sharing the niche (and K) with the tumor, per lattice: they
    grow by the same Gompertz law of the niche's total, so dispersed disease competes
    with them for space."""
    necrosis_per_min: NonNegFloat = parameter("tumor.necrosis_per_min")
    """Necrosis rate at anoxia (scaled down by the oxygen rule)."""
    apoptosis_per_min: NonNegFloat = parameter("tumor.apoptosis_per_min")
    clearance_min: PosFloat = parameter("tumor.clearance_min")
    """Time a dead cell occupies its site before it is cleared."""


class ProductConfig(Strict):
    """The infused CAR T product."""

    edits: list[str] = []
    """Names of gene edits (see ``edits``)."""
    initial_exhaustion: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.product.initial_exhaustion")
    divisions: Annotated[int, Field(ge=0, le=100)] = int(parameter("car_t.product.divisions"))


class CarTConfig(_Population):
    kind: ClassVar[str] = "car_t"
    initial_cells: Annotated[int, Field(ge=0)] = 0
    """Cells placed at random free sites at the start."""
    arrival_per_vessel_per_min: NonNegFloat = 0.0
    """Arrivals from blood per vessel site (modulated by ``rules.arrive``)."""
    move: CarTMove = Field(default_factory=CarTMove)
    engage_per_min: NonNegFloat = parameter("car_t.engage_per_min")
    """Engagement rate next to an antigen-high tumor cell."""
    engagement_min: PosFloat = parameter("car_t.engagement_min")
    """How long an engagement lasts; the kill (or not) happens at its end."""
    kill_probability: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.kill_probability")
    divide_probability: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.divide_probability")
    """Chance that a completed engagement triggers a division (divisions left > 0)."""
    exhaustion_per_engagement: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.exhaustion_per_engagement")
    exhaustion_recovery_per_min: NonNegFloat = parameter("car_t.exhaustion_recovery_per_min")
    """Rate at which the reversible part of exhaustion decays while a cell is not engaged
    (rest; Weber 2021)."""
    exhaustion_irreversible: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.exhaustion_irreversible")
    """Share of each engagement's exhaustion that rest cannot reverse."""
    exhaustion_recovered: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.exhaustion_recovered")
    """An exhausted cell (exhaustion reached 1) regains function once rest brings its
    exhaustion below this (about 3.6 days of rest at the defaults; Weber 2021: 4 days)."""
    bystander_kill_probability: Annotated[float, Field(ge=0, le=1)] = parameter("car_t.bystander_kill_probability")
    """Chance that an alive antigen-negative neighbour of a killed target dies with it
    (FAS / IFN-gamma bystander killing; Upadhyay 2021)."""
    death_per_min: NonNegFloat = parameter("car_t.death_per_min")
    egress_per_min: NonNegFloat = parameter("car_t.egress_per_min")
    """Rate at which free CAR T next to a vessel site return to the blood (into the
    blood pool of their product)."""
    product: ProductConfig = ProductConfig()


class MonocyteConfig(_Population):
    kind: ClassVar[str] = "monocyte"
    initial_cells: Annotated[int, Field(ge=0)] = 0
    """Cells placed at random free sites at the start."""
    recruit_per_vessel_per_min: NonNegFloat = parameter("monocyte.recruit_per_vessel_per_min")
    move: MonocyteMove = Field(default_factory=MonocyteMove)
    activate_per_min: NonNegFloat = parameter("monocyte.activate_per_min")
    """Activation without IFN-gamma or engaged CAR T (rare: CRS needs CAR T activity)."""
    deactivate_per_min: NonNegFloat = parameter("monocyte.deactivate_per_min")
    """Return of an activated monocyte to rest (half-life 1 day: activation is reversible)."""
    death_per_min: NonNegFloat = parameter("monocyte.death_per_min")


class GranulocyteConfig(_Population):
    kind: ClassVar[str] = "granulocyte"
    initial_cells: Annotated[int, Field(ge=0)] = 0
    """Cells placed at random free sites at the start."""
    recruit_per_vessel_per_min: NonNegFloat = parameter("granulocyte.recruit_per_vessel_per_min")
    move: GranulocyteMove = Field(default_factory=GranulocyteMove)
    death_per_min: NonNegFloat = parameter("granulocyte.death_per_min")


class CrsGradingConfig(Strict):
    """The signs of CRS from the effective IL-6-like signal, graded by the ASTCT consensus
    (Lee 2019): fever is needed for grade 1 (not after tocilizumab or corticosteroids,
    which mask it); hypotension or hypoxia set grades 2-4."""

    fever: PosFloat = parameter("patient.crs.fever")
    """Effective cytokine (pg/mL-like) at which the patient has fever (>= 38 C)."""
    hypotension: list[PosFloat] = parameter("patient.crs.hypotension")
    """Levels at which hypotension needs fluids, one vasopressor, several vasopressors."""
    hypoxia: list[PosFloat] = parameter("patient.crs.hypoxia")
    """Levels at which hypoxia needs low-flow oxygen, high-flow oxygen, positive pressure."""

    @model_validator(mode="after")
    def _ordered(self):
        for key in ("hypotension", "hypoxia"):
            t = getattr(self, key)
            if len(t) != 3 or any(b <= a for a, b in zip(t, t[1:])):
                raise ValueError(f"{key} {t} must be 3 increasing values (grades 2-4)")
        return self


class VariabilityConfig(Strict):
    """Between-patient variability: each replicate's patient draws a log-normal multiplier
    ``exp(omega z)``, z ~ N(0, 1), from its seed (the inter-individual variability of
    population kinetic models, Stein 2019). 0 makes every patient the typical one."""

    expansion: Annotated[float, Field(ge=0, le=3)] = parameter("patient.variability.expansion")
    """omega of the antigen-driven expansion rate."""
    cytokine: Annotated[float, Field(ge=0, le=3)] = parameter("patient.variability.cytokine")
    """omega of the myeloid IL-6 production."""


class PatientConfig(Strict):
    """The systemic compartment (docs/model.md, "Patient"): what the lattice stands for,
    the CAR T kinetics, the blood compartment, CRS, toxicity and response thresholds.
    Rates are per minute."""

    burden_scale: Annotated[float, Field(ge=1, le=1e14)] = 1e5
    """The lattice's weight s: its volume stands for s times its volume of the patient's
    disease, each CAR T, monocyte and granulocyte on it for s patient cells, and each
    tumor agent for s cells at the start (docs/model.md, "The patient and its sample")."""
    # -- CAR T kinetics: effectors in blood (P), tissues (T) and the disease (D); memory (M)
    blood_volume_ml: PosFloat = parameter("patient.blood_volume_ml")
    extravasation_ul_per_min: Annotated[float, Field(ge=0, le=1)] = parameter("patient.extravasation_ul_per_min")
    """Blood volume per vessel site per minute whose CAR T enter the tissue: arrivals at a
    lattice vessel = this x the blood concentration (cells/uL); the disease takes
    P x this x (lattice vessels x burden_scale) / blood volume: the lattice's arrivals,
    each taking burden_scale effectors from blood."""
    marrow_homing: Annotated[float, Field(gt=0, le=100)] = parameter("patient.marrow_homing")
    """Multiplier of entry into the disease (CXCR4/CXCL12 homing to marrow: > 1)."""
    distribution_out_per_min: NonNegFloat = parameter("patient.distribution_out_per_min")
    """Blood to other tissues (the distribution phase)."""
    distribution_in_per_min: NonNegFloat = parameter("patient.distribution_in_per_min")
    """Other tissues back to blood."""
    expansion_per_min: Annotated[float, Field(ge=0, le=0.01)] = parameter("patient.expansion_per_min")
    """Antigen-driven proliferation of an effector that meets antigen all the time."""
    homeostatic_per_min: Annotated[float, Field(ge=0, le=0.01)] = parameter("patient.homeostatic_per_min")
    """Antigen-independent proliferation right after lymphodepletion at boost 1 (IL-7/IL-15)."""
    contraction_per_min: NonNegFloat = parameter("patient.contraction_per_min")
    """Death of effectors (contraction)."""
    memory_per_min: NonNegFloat = parameter("patient.memory_per_min")
    """Effectors becoming memory cells."""
    memory_decay_per_min: NonNegFloat = parameter("patient.memory_decay_per_min")
    """Loss of memory cells (half-life 90 days: the persistence phase)."""
    recall_per_min: NonNegFloat = parameter("patient.recall_per_min")
    """Memory back to effectors, times the antigen encounter."""
    encounter_half_ratio: PosFloat = parameter("patient.encounter_half_ratio")
    """Blood antigen-positive cells per blood/tissue effector at which half the effectors meet antigen."""
    blood_kills_per_min: NonNegFloat = parameter("patient.blood_kills_per_min")
    """Antigen-positive cells killed per engaged effector per minute in blood and tissues."""
    normal_antigen_cells: Annotated[float, Field(ge=0, le=1e13)] = parameter("patient.normal_antigen_cells")
    """Normal antigen-positive cells (B cells for CD19): an antigen sink; 0 for none."""
    normal_antigen_renewal_per_min: NonNegFloat = parameter("patient.normal_antigen_renewal_per_min")
    """Return of normal antigen-positive cells toward their normal number."""
    circulating_tumor_fraction: Annotated[float, Field(ge=0, le=10)] = parameter("patient.circulating_tumor_fraction")
    """Circulating tumor cells per tumor cell of the lattice's disease at equilibrium
    (hematologic disease: > 0)."""
    circulating_exchange_per_min: NonNegFloat = parameter("patient.circulating_exchange_per_min")
    """Rate at which circulating tumor cells follow the marrow disease."""
    variability: VariabilityConfig = Field(default_factory=VariabilityConfig)
    # -- CRS: myeloid activation -> IL-6 -> signs -> ASTCT grade
    activation_per_min: NonNegFloat = parameter("patient.activation_per_min")
    """Activation of the patient's monocytes/macrophages at full stimulus."""
    deactivation_per_min: NonNegFloat = parameter("patient.deactivation_per_min")
    """Return of activated myeloid cells to rest (reversible activation)."""
    activation_half_car_t: PosFloat = parameter("patient.activation_half_car_t")
    """Activated CAR T in the patient (cells) at which their stimulus is half its maximum."""
    activation_half_kills_per_min: PosFloat = parameter("patient.activation_half_kills_per_min")
    """Tumor cells killed per minute (pyroptosis, DAMPs) at which their stimulus is half its maximum."""
    il6_per_min: NonNegFloat = parameter("patient.il6_per_min")
    """IL-6-like cytokine (pg/mL-like per minute) with every myeloid cell activated."""
    cytokine_clearance_per_min: NonNegFloat = parameter("patient.cytokine_clearance_per_min")
    """Systemic IL-6-like cytokine clearance (half-life 3 h)."""
    crs: CrsGradingConfig = Field(default_factory=CrsGradingConfig)
    # -- the product and the outcomes
    inflammation_half_burden: PosFloat = parameter("patient.inflammation_half_burden")
    """Baseline burden at which the pre-infusion inflammation index reaches 0.5."""
    inflammation_myeloid_weight: Annotated[float, Field(ge=0, le=1)] = parameter("patient.inflammation_myeloid_weight")
    """Weight of the myeloid term (lattice monocytes + granulocytes per tumor cell)."""
    fitness_loss: Annotated[float, Field(ge=0, le=1)] = parameter("patient.fitness_loss")
    """At inflammation index 1 a product loses this fraction of its divisions and
    expansion, and gains this much initial exhaustion."""
    icans_half_cytokine: PosFloat = parameter("patient.icans_half_cytokine")
    icans_half_car_t: PosFloat = parameter("patient.icans_half_car_t")
    assessment_day: PosFloat = 28.0
    """Day after infusion at which the response is classified (also at the end)."""
    cr_below_cells: PosFloat = parameter("patient.cr_below_cells")
    """Complete response (by imaging or morphology): the disease below this many cells."""
    marrow_cells: PosFloat = parameter("patient.marrow_cells")
    """Nucleated marrow cells, the denominator of an MRD assay."""
    mrd_sensitivity: Annotated[float, Field(gt=0, lt=1)] = parameter("patient.mrd_sensitivity")
    """MRD-negative: tumor cells below this share of ``marrow_cells``."""


PER_REPLICATE = ("patient.",)
"""Config keys (prefixes) that may differ between the replicates of one batch (each
replicate then has its own config, :attr:`tme_abm.model.model.Replica.config`): those
under ``patient``, read only by each replicate's own patient and outcomes, except
:data:`SHARED_BY_BATCH`; and :data:`~tme_abm.biology.host.PER_REPLICATE_RATES`. Every other key shapes what
the replicates share (the lattice, the fields, the other rates, the therapy timeline):
replicates that differ there run in separate batches (docs/sweeps.md, "Batches")."""
SHARED_BY_BATCH = ("patient.burden_scale",)
"""Patient keys the whole batch shares: the lattice's weight sets its initial cells."""


def per_replicate(key: str) -> bool:
    """Whether dotted config ``key`` may differ between the replicates of one batch."""
    return (key.startswith(PER_REPLICATE) and key not in SHARED_BY_BATCH) or key in PER_REPLICATE_RATES


class _Event(Strict):
    day: float
    """Day relative to the (first) infusion, day 0."""


class InfusionEvent(_Event):
    kind: Literal["infusion"]
    dose_cells: Annotated[float, Field(gt=0, le=1e13)]
    """CAR T cells infused into the blood."""
    product: ProductConfig = Field(default_factory=ProductConfig)


class LymphodepletionEvent(_Event):
    kind: Literal["lymphodepletion"]
    myeloid_kill_fraction: Fraction = parameter("therapy.lymphodepletion.myeloid_kill_fraction")
    expansion_boost: Annotated[float, Field(ge=0, le=10)] = parameter("therapy.lymphodepletion.expansion_boost")
    """Homeostatic proliferation right after lymphodepletion, in units of
    ``patient.homeostatic_per_min`` (IL-7/IL-15 after lymphodepletion; Kochenderfer 2016)."""
    boost_days: PosFloat = parameter("therapy.lymphodepletion.boost_days")
    """e-folding time of the boost."""


class ResectionRegion(Strict):
    center_sites: list[float]
    """Centre, in site coordinates (C order: [y, x] or [z, y, x])."""
    radius_sites: PosFloat


class ResectionEvent(_Event):
    kind: Literal["resection"]
    fraction: Annotated[float, Field(ge=0, le=1)] = 0.9
    """Fraction of the tumor cells removed: from the centre out when ``order: inside``
    (the mass is taken and its margin left), the outermost first when ``order:
    outside`` (the core is left), at random when ``order: random``."""
    order: Literal["inside", "outside", "random"] = "inside"
    """Which cells a fraction takes first: inside (from the centre out), outside (the outermost) or random."""
    region: ResectionRegion | None = None
    """Remove the tumor cells inside this ball instead of a fraction."""
    wound_cytokine: NonNegFloat = parameter("therapy.resection.wound_cytokine")
    """Pulse of systemic cytokine (pg/mL-like) from the wound."""


class RadiotherapyEvent(_Event):
    kind: Literal["radiotherapy"]
    fractions: Annotated[int, Field(ge=1, le=100)] = 1
    """Radiotherapy fractions, ``interval_days`` apart."""
    interval_days: PosFloat = 1.0
    """Days between fractions."""
    dose_gy: Annotated[float, Field(gt=0, le=30)] = 2.0
    """Physical dose per fraction, Gy."""
    alpha_per_gy: NonNegFloat = parameter("therapy.radiotherapy.alpha_per_gy")
    beta_per_gy2: NonNegFloat = parameter("therapy.radiotherapy.beta_per_gy2")
    oer_max: Annotated[float, Field(ge=1)] = parameter("therapy.radiotherapy.oer_max")
    """Oxygen enhancement: anoxic cells need oer_max x the dose."""
    oer_k_mmHg: PosFloat = parameter("therapy.radiotherapy.oer_k_mmHg")
    """Oxygen at which the dose-modifying factor is halfway (Alper-Howard-Flanders)."""
    chemokine_pulse: NonNegFloat = parameter("therapy.radiotherapy.chemokine_pulse")
    """CXCL10-like chemokine added at every surviving tumor cell (immunogenic RT)."""
    perfusion_gain: Annotated[float, Field(ge=0.1, le=10)] = parameter("therapy.radiotherapy.perfusion_gain")
    """Vascular normalisation: the microvessel density at the lesion's sites is multiplied
    by this per fraction (assumption, docs/model.md)."""
    myeloid_kill_fraction: Annotated[float, Field(ge=0, le=1)] = parameter("therapy.radiotherapy.myeloid_kill_fraction")
    """Share of the lattice's monocytes and granulocytes killed per fraction (assumption)."""
    bystander_sensitization: Annotated[float, Field(ge=1, le=100)] = parameter(
        "therapy.radiotherapy.bystander_sensitization")
    """Surviving tumor cells become this many times more susceptible to CAR T bystander
    killing (DeSelm 2018: TRAIL-mediated killing of antigen-negative cells)."""


class MRDEvent(_Event):
    kind: Literal["mrd"]
    residual_cells: Annotated[float, Field(ge=0)] = 1e7
    """Patient tumor cells left when minimal residual disease starts: whole tumor agents
    chosen at random, the last one trimmed to the count."""


DRUG_DEFAULTS = {drug: {k: parameter(f"therapy.{drug}.{k}") for k in ("effect", "half_life_days")}
                 for drug in ("tocilizumab", "corticosteroid")}


class DrugEvent(_Event):
    """A drug against CRS (biology/patient.py ``DRUGS``): tocilizumab blocks a share of
    IL-6 signalling (an IL-6 receptor antibody), a corticosteroid suppresses a share of
    myeloid activation and IL-6 production (dexamethasone, repeated doses); the share
    decays with the drug's half-life."""

    kind: Literal["tocilizumab", "corticosteroid"]
    effect: Annotated[float, Field(ge=0, le=1)]
    """Share blocked (tocilizumab) or suppressed (corticosteroid) right after the dose
    (default 0.9 and 0.8)."""
    half_life_days: PosFloat
    """Half-life of the effect (default 5 and 1 days)."""

    @model_validator(mode="before")
    @classmethod
    def _drug_defaults(cls, data: Any):
        if isinstance(data, dict) and data.get("kind") in DRUG_DEFAULTS:
            data = {**DRUG_DEFAULTS[data["kind"]], **data}
        return data


TherapyEvent = Annotated[
    InfusionEvent | LymphodepletionEvent | ResectionEvent | RadiotherapyEvent | MRDEvent | DrugEvent,
    Field(discriminator="kind"),
]


class OutputConfig(Strict):
    path: str | None = None
    """Run file; default runs/<name>.h5 (relative to the working directory)."""
    record_every_ticks: Annotated[int, Field(ge=1)] = 1
    """Time-series rows every this many ticks (plus the initial and final state)."""
    snapshot_every_min: Annotated[float, Field(gt=0)] = 360.0
    """Field snapshots at t = 0, every this many minutes (rounded to whole ticks), and at the end."""
    cell_snapshot_every_min: Annotated[float, Field(gt=0)] = 1440.0
    """Cell snapshots (every cell's position, type and state), scheduled like field snapshots."""
    checkpoint_every_min: Annotated[float, Field(gt=0)] = 1440.0
    """Model-state checkpoints for ``--resume`` at t = 0 and every this many minutes."""
    hypoxic_threshold_mmHg: NonNegFloat = 10.0
    """Voxels below this oxygen count as hypoxic in the time series."""


FILE_NAME = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*$"
"""A name that becomes part of a file name (a run's, a sweep's): no folder separators,
and no leading dot, so neither ``..`` nor a hidden file."""


class Config(Strict):
    """A complete, validated run configuration."""

    name: Annotated[str, Field(min_length=1, pattern=FILE_NAME)] = "run"
    """Run name: the default output file is runs/<name>.h5 (a plain file name: letters, digits, _ . -, not
    starting with a dot)."""
    seed: Annotated[int, Field(ge=0, le=2**63 - 1)] = 0
    """The seed of every random draw of the run (docs/model.md, "Time, probabilities, random numbers")."""
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    """Array backend: auto (CuPy when a GPU is usable and the run large enough, else NumPy), numpy or cupy (the
    environment variable TME_ABM_BACKEND overrides it)."""
    dtype: Literal["float32", "float64"] = "float32"
    """Dtype of the field arrays."""
    lattice: LatticeConfig = LatticeConfig()
    time: TimeConfig = TimeConfig()
    fields: dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], FieldConfig] = {}
    tumor: TumorConfig = Field(default_factory=TumorConfig)
    car_t: CarTConfig = Field(default_factory=CarTConfig)
    monocyte: MonocyteConfig = Field(default_factory=MonocyteConfig)
    granulocyte: GranulocyteConfig = Field(default_factory=GranulocyteConfig)
    edits: dict[Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")], EditConfig] = {}
    patient: PatientConfig = Field(default_factory=PatientConfig)
    therapy: list[TherapyEvent] = []
    """Timeline events, days relative to the first infusion (day 0)."""
    output: OutputConfig = OutputConfig()

    @model_validator(mode="before")
    @classmethod
    def _merge_defaults(cls, data: Any):
        data = _merged_over_defaults(data, "fields", default_fields())
        if isinstance(data, dict) and isinstance(data.get("edits") or {}, dict):
            # a user edit replaces a default edit of the same name as a whole
            data = {**data, "edits": {**default_edits(), **(data.get("edits") or {})}}
        return data

    @model_validator(mode="after")
    def _physically_possible(self):
        self._check_field_names()
        if "oxygen" not in self.enabled_fields:
            raise ValueError("fields.oxygen must be enabled: tumor growth and death depend on it")
        faces = FACES[-2 * self.lattice.dims:]
        for name, fc in self.fields.items():
            for face in FACES[: 6 - 2 * self.lattice.dims]:
                if getattr(fc.boundary, face) is not None:
                    raise ValueError(
                        f"fields.{name}.boundary.{face}: a {self.lattice.dims}D lattice has faces {', '.join(faces)}"
                    )
        for name, fc in self.enabled_fields.items():
            if fc.scheme in ("steady", "implicit") and fc.diffusion_um2_per_min == 0:
                raise ValueError(f"fields.{name}.scheme: {fc.scheme} needs a diffusing field "
                                 f"(diffusion_um2_per_min is 0); use lod")
            if fc.scheme == "steady" and fc.decay_per_min == 0 and not self._field_is_fixed(fc):
                raise ValueError(f"fields.{name}.scheme: steady, but the field has no steady state (no decay, and "
                                 f"neither vessels nor a dirichlet face fix it); use lod")
        if self.tumor.archetype in ("solid", "bulky"):
            self._check_spheroid()
        n_sites = int(np.prod(self.lattice.shape))
        if self.tumor.archetype in ("dispersed", "bulky") and self.dispersed_agents > n_sites:
            key = "burden_cells" if self.tumor.burden_cells is not None else "initial_cells"
            raise ValueError(f"tumor.{key}: {self.dispersed_agents} tumor agents exceed the {n_sites} lattice sites "
                             f"(raise patient.burden_scale or the lattice)")
        immune = {k: self.population(k).initial_cells for k in ("car_t", "monocyte", "granulocyte")}
        if sum(immune.values()) > n_sites:
            shown = ", ".join(f"{k}.initial_cells {n}" for k, n in immune.items() if n)
            raise ValueError(f"{shown}: more cells than the {n_sites} lattice sites")
        self._check_rules()
        self._check_therapy()
        self._check_sample()
        for key in ("snapshot_every_min", "cell_snapshot_every_min", "checkpoint_every_min"):
            if getattr(self.output, key) < self.time.tick_min:
                raise ValueError(
                    f"output.{key} {getattr(self.output, key)} is shorter than one tick "
                    f"({self.time.tick_min} min)"
                )
        return self

    def _check_field_names(self) -> None:
        defaults = default_fields()
        for name, fc in self.fields.items():
            if name not in defaults and not fc.new:
                hint = difflib.get_close_matches(name, list(defaults), n=1)
                raise ValueError(f"fields.{name}: not a default field" + (f" (did you mean {hint[0]}?)" if hint else "")
                                 + f"; the defaults are {', '.join(defaults)}; declare a new field with new: true")
            if name in defaults and fc.new:
                raise ValueError(f"fields.{name}.new: {name} is a default field; new: true declares other names")

    def _check_sample(self) -> None:
        """The disease must have a growth law, and only dispersed disease is sampled from
        its burden."""
        t = self.tumor
        if t.gompertz_per_min is None and t.capacity_fold == 1:
            raise ValueError("tumor.capacity_fold 1: a disease at its carrying capacity has no doubling time; "
                             "set tumor.gompertz_per_min, or a capacity_fold above 1")
        if t.burden_cells is not None and t.archetype != "dispersed":
            raise ValueError(f"tumor.burden_cells {t.burden_cells:g}: sets the sample of dispersed disease only "
                             f"(archetype {t.archetype}); a lesion's sample is its radius_sites")

    @property
    def dispersed_agents(self) -> int:
        """Tumor agents scattered at the start (archetypes dispersed and bulky):
        ``tumor.initial_cells``, or ``max(1, round(burden_cells / burden_scale))``."""
        t = self.tumor
        if t.burden_cells is None or t.archetype != "dispersed":
            return t.initial_cells
        return max(1, round(t.burden_cells / self.patient.burden_scale))

    @property
    def tumor_center_sites(self) -> list[float]:
        """Centre of the initial spheroid, C order: ``tumor.center_sites`` or the middle."""
        c = self.tumor.center_sites
        return list(c) if c is not None else [(s - 1) / 2.0 for s in self.lattice.shape]

    def _check_spheroid(self) -> None:
        t = self.tumor
        if t.center_sites is not None and len(t.center_sites) != self.lattice.dims:
            raise ValueError(f"tumor.center_sites {t.center_sites}: needs {self.lattice.dims} coordinates "
                             f"(C order) for a {self.lattice.dims}D lattice")
        for c, n in zip(self.tumor_center_sites, self.lattice.shape):
            if c - t.radius_sites < -0.5 or c + t.radius_sites > n - 0.5:
                where = "" if t.center_sites is None else f" centred at {t.center_sites}"
                raise ValueError(f"tumor.radius_sites {t.radius_sites}: a spheroid of diameter {2 * t.radius_sites} "
                                 f"sites{where} does not fit the lattice {self.lattice.shape}")

    def population(self, kind: str) -> _Population:
        return getattr(self, kind)

    def _drop_defaults_of_disabled_fields(self) -> None:
        """A disabled field takes with it the default rules that read or write it and the
        default chemotaxis up its gradient (what the user set on it stays, and is refused
        by the checks that follow)."""
        off = {n for n, fc in self.fields.items() if not fc.enabled}
        if not off:
            return
        defaults = default_rules()
        for kind in CELL_TYPES:
            pop = self.population(kind)
            for beh in list(pop.rules):
                writes_off = beh.startswith(("secrete_", "uptake_")) and beh.split("_", 1)[1] in off
                for name in list(pop.rules[beh]):
                    mod = pop.rules[beh][name]
                    default = defaults.get(kind, {}).get(beh, {}).get(name)
                    if (writes_off or mod.signal in off) and default is not None \
                            and mod == ModulatorConfig.model_validate(default):
                        del pop.rules[beh][name]
                if writes_off and not pop.rules[beh]:
                    del pop.rules[beh]
            move = getattr(pop, "move", None)
            if move is not None and move.chemotaxis_field in off \
                    and move.chemotaxis_field == type(move).model_fields["chemotaxis_field"].default:
                move.chemotaxis_field = None

    def _check_move_rate(self, kind: str, speed_um_per_min: float, step_um: float) -> None:
        """A walk makes speed x tick / ``step_um`` (the mean Moore step) moves per tick, one
        sub-move each: refuse more than :data:`MAX_MOVES_PER_TICK`."""
        moves = speed_um_per_min * self.time.tick_min / step_um
        if moves > MAX_MOVES_PER_TICK:
            raise ValueError(f"{kind}.move.speed_um_per_min {speed_um_per_min:g} at time.tick_min "
                             f"{self.time.tick_min:g} and lattice.spacing_um {self.lattice.spacing_um:g}: "
                             f"{moves:.3g} moves per tick; at most {MAX_MOVES_PER_TICK} are allowed (shorten the tick)")

    def _disabled(self, name: str) -> str:
        """" (the field X is disabled: fields.X.enabled is false)" when ``name`` is one."""
        fc = self.fields.get(name)
        return f" (the field {name} is disabled: fields.{name}.enabled is false)" if fc and not fc.enabled else ""

    def _check_rules(self) -> None:
        self._drop_defaults_of_disabled_fields()
        fields = self.enabled_fields
        step_um = self.lattice.spacing_um * mean_step_sites(Lattice(self.lattice.shape, self.lattice.spacing_um))
        for kind in CELL_TYPES:
            pop = self.population(kind)
            allowed = set(BEHAVIOURS[kind]) | {f"{v}_{f}" for f in fields for v in ("secrete", "uptake")}
            for beh, mods in pop.rules.items():
                if beh not in allowed:
                    disabled = self._disabled(beh.split("_", 1)[1]) if "_" in beh else ""
                    if disabled:
                        raise ValueError(f"{kind}.rules.{beh}: a rule for a field that is not there{disabled}")
                    hint = difflib.get_close_matches(beh, sorted(allowed), n=1)
                    raise ValueError(
                        f"{kind}.rules.{beh}: unknown behaviour"
                        + (f" (did you mean {hint[0]}?)" if hint else "")
                        + f"; allowed: {', '.join(sorted(allowed))}"
                    )
                for name, mod in mods.items():
                    self._check_signal(f"{kind}.rules.{beh}.{name}.signal", mod.signal, kind)
            move = getattr(pop, "move", None)
            if move is not None:
                self._check_move_rate(kind, move.speed_um_per_min, step_um)
            if move is not None and move.chemotaxis_field is not None and move.chemotaxis_field not in fields:
                raise ValueError(
                    f"{kind}.move.chemotaxis_field: {move.chemotaxis_field!r} is not an enabled field "
                    f"({', '.join(fields)}){self._disabled(move.chemotaxis_field)}"
                )
        for e in self.car_t.product.edits:
            if e not in self.edits:
                raise ValueError(f"car_t.product.edits: unknown edit {e!r}; defined edits: {', '.join(self.edits)}")
        car_t_mods = {n for mods in self.car_t.rules.values() for n in mods}
        used = {*self.car_t.product.edits,
                *(e for ev in self.therapy if ev.kind == "infusion" for e in ev.product.edits)}
        defaults = default_edits()
        for ename, edit in self.edits.items():
            if ename not in used and ename in defaults and edit == EditConfig.model_validate(defaults[ename]):
                continue  # a default edit no product uses may name modulators a disabled field took away
            for n in [*edit.remove, *edit.change]:
                if n not in car_t_mods:
                    raise ValueError(
                        f"edits.{ename}: {n!r} is not a CAR T modulator; known: {', '.join(sorted(car_t_mods))}"
                    )
            for n, ch in edit.change.items():
                bad = set(ch) - set(ModulatorConfig.model_fields)
                if bad:
                    raise ValueError(f"edits.{ename}.change.{n}: unknown keys {sorted(bad)}")
                for beh, mods in self.car_t.rules.items():
                    if n in mods:
                        try:
                            ModulatorConfig.model_validate({**mods[n].model_dump(), **ch})
                        except ValidationError as exc:
                            problem = exc.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
                            raise ValueError(f"edits.{ename}.change.{n} {ch}: makes car_t.rules.{beh}.{n} "
                                             f"invalid: {problem}") from None

    @property
    def start_day(self) -> float:
        """Day (relative to infusion) at which the simulation starts: the earliest event (or
        0) minus the burn-in."""
        return min([0.0, *(e.day for e in self.therapy)]) - self.time.burn_in_days

    @property
    def end_day(self) -> float:
        """Day (relative to infusion) at which the simulation ends."""
        return self.start_day + self.time.burn_in_days + self.time.duration_days

    def _check_therapy(self) -> None:
        end = self.end_day
        rt_days = []
        for i, e in enumerate(self.therapy):
            last = e.day + (e.fractions - 1) * e.interval_days if e.kind == "radiotherapy" else e.day
            if last >= end:
                raise ValueError(
                    f"therapy.{i} ({e.kind}): day {last:g} is at or after the end of the run "
                    f"(day {end:g} = first event day {end - self.time.duration_days:g} + duration_days "
                    f"{self.time.duration_days:g})"
                )
            if e.kind == "resection" and e.region is not None and len(e.region.center_sites) != self.lattice.dims:
                raise ValueError(
                    f"therapy.{i}.region.center_sites {e.region.center_sites}: needs {self.lattice.dims} "
                    f"coordinates for a {self.lattice.dims}D lattice"
                )
            if e.kind == "radiotherapy":
                if e.fractions > 1 and e.interval_days * 1440 < self.time.tick_min:
                    raise ValueError(f"therapy.{i}: interval_days {e.interval_days} is shorter than one tick")
                rt_days += [(e.day + k * e.interval_days, i) for k in range(e.fractions)]
        rt_days.sort()
        for (d1, i1), (d2, i2) in zip(rt_days, rt_days[1:]):
            if (d2 - d1) * 1440 < self.time.tick_min:
                raise ValueError(
                    f"therapy.{i1} and therapy.{i2}: radiotherapy fractions at days {d1:g} and {d2:g} overlap "
                    f"(less than one tick apart)"
                )
        for i, e in enumerate(self.therapy):
            if e.kind == "infusion":
                for ed in e.product.edits:
                    if ed not in self.edits:
                        raise ValueError(f"therapy.{i}.product.edits: unknown edit {ed!r}; "
                                         f"defined: {', '.join(self.edits)}")

    def _check_signal(self, key: str, signal: str, kind: str) -> None:
        if signal.startswith("contact:"):
            if signal[8:] not in CONTACT_TYPES:
                raise ValueError(f"{key}: {signal!r}: contact types are {', '.join(CONTACT_TYPES)}")
        elif signal not in self.enabled_fields and signal not in STATE_SIGNALS[kind]:
            raise ValueError(
                f"{key}: unknown signal {signal!r}{self._disabled(signal)}; use an enabled field "
                f"({', '.join(self.enabled_fields)}), contact:<{'|'.join(CONTACT_TYPES)}> or a {kind} state signal "
                f"({', '.join(STATE_SIGNALS[kind]) or 'none'})"
            )

    @property
    def enabled_fields(self) -> dict[str, FieldConfig]:
        return {k: v for k, v in self.fields.items() if v.enabled}

    def _has_vessels(self, fc: FieldConfig) -> bool:
        """Whether vessel voxels hold the field at a value."""
        v = self.lattice.vessels
        return fc.vessel_value is not None and v.layout != "none" and not (v.layout == "random" and v.density == 0)

    def _field_is_fixed(self, fc: FieldConfig) -> bool:
        """Whether vessels or a dirichlet face hold the field at a value."""
        faces = FACES[-2 * self.lattice.dims:]
        return self._has_vessels(fc) or any(fc.boundary.face(f).kind == "dirichlet" for f in faces)

    @property
    def field_schemes(self) -> dict[str, str]:
        """``steady``, ``implicit`` or ``lod`` per enabled field, with ``auto`` decided (FieldConfig.scheme)."""
        interval = self.time.tick_min * self.time.fields_every_ticks
        lat = self.lattice
        extent = max(lat.shape) * lat.spacing_um
        v = lat.vessels
        # distance between the voxels that hold a field: the mean vessel spacing, or the lattice
        vessel_gap = {"random": lat.spacing_um * max(v.density, 1e-12) ** (-1 / lat.dims),
                      "grid": lat.spacing_um * v.grid_spacing_sites}.get(v.layout, extent)
        out = {}
        for name, fc in self.enabled_fields.items():
            if fc.scheme == "auto":
                fixed_at = min(extent, vessel_gap) if self._has_vessels(fc) else extent
                if quasi_steady(fc.diffusion_um2_per_min, fc.decay_per_min, self._field_is_fixed(fc), fixed_at,
                                interval):
                    out[name] = "steady"
                elif fc.diffusion_um2_per_min > 0:
                    out[name] = "implicit"
                else:
                    out[name] = "lod"
            else:
                out[name] = fc.scheme
        return out

    @property
    def field_dt_min(self) -> float:
        return self.time.tick_min * self.time.fields_every_ticks / self.time.field_substeps

    def to_yaml(self) -> str:
        """The resolved config (defaults filled in) as YAML text."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _merged_over_defaults(data: Any, key: str, defaults: dict) -> Any:
    """``data`` with ``data[key]`` deep-merged over ``defaults`` (anything that is not a
    mapping is passed through for the type check to report)."""
    if isinstance(data, dict):
        user = data.get(key) or {}
        if isinstance(user, dict):
            data = {**data, key: _deep_merge(defaults, user)}
    return data


def _deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out

