"""Perfusion: the capillary bed below the lattice's resolution, as a Krogh-cylinder
exchange term (docs/model.md, "Perfusion").

A site with microvessel density ``m`` (capillaries crossing a unit area, or capillary
length per unit volume in 3D) is the mean of Krogh cylinders of radius ``R = 1/sqrt(pi m)``
around capillaries of radius ``r_c`` (Krogh 1919). A perfused field (``fields.<name>.perfused``)
gains ``kappa (c_v - c)`` per minute at such a site, ``c_v`` its vessel value, with the
exchange rate of a line source in its cylinder (the "well index" of a Peaceman well):

    kappa = 2 pi D m / (ln(R / r_c) - 3/4)        [1/min]

which is exact for the cylinder's mean when the consumption within it is uniform, and
within a few percent for the first-order uptake of the lattice's cells at the default
densities (tests/test_perfusion.py compares it with the Bessel-function solution).
Vessel density changes oxygenation through ``kappa``; the vessel sites of the lattice
(``lattice.vessels``) remain the larger vessels: fixed-value voxels and entry points
for cells.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

PER_MM2 = 1e-6
"""Microvessels per mm^2 -> per um^2."""


def max_density_per_mm2(capillary_radius_um: float) -> float:
    """Largest microvessel density (per mm^2) allowed: Krogh cylinders 3 capillary radii
    wide (the well index's log term must stay positive, which needs more than
    ``e^(3/4) r_c``; 1,415/mm^2 at r_c = 5 um, above any tissue's capillary density)."""
    return 1.0 / (math.pi * (3.0 * capillary_radius_um) ** 2) / PER_MM2


def krogh_exchange_per_min(diffusion_um2_per_min: float, density_per_um2, capillary_radius_um: float):
    """(...) exchange rate ``kappa`` (1/min) of a field with diffusion coefficient D at
    microvessel densities ``density_per_um2`` (array, per um^2; 0 where unperfused)."""
    m = np.asarray(density_per_um2, dtype=np.float64)
    out = np.zeros_like(m)
    on = m > 0
    radius = 1.0 / np.sqrt(math.pi * m[on])
    out[on] = 2.0 * math.pi * diffusion_um2_per_min * m[on] / (np.log(radius / capillary_radius_um) - 0.75)
    return out


def krogh_profile(r_um, capillary_radius_um: float, cylinder_radius_um: float, diffusion_um2_per_min: float,
                  uptake_per_min: float, vessel_value: float):
    """The steady state of ``D lap(c) = k c`` in a Krogh cylinder, ``c(r_c) = c_v`` and no
    flux at ``R``: ``c_v [K1(R/L) I0(r/L) + I1(R/L) K0(r/L)] / [same at r_c]``, L = sqrt(D/k)."""
    L = math.sqrt(diffusion_um2_per_min / uptake_per_min)
    a, b = special.k1(cylinder_radius_um / L), special.i1(cylinder_radius_um / L)
    r = np.asarray(r_um, dtype=np.float64) / L
    rc = capillary_radius_um / L
    return vessel_value * (a * special.i0(r) + b * special.k0(r)) / (a * special.i0(rc) + b * special.k0(rc))


def krogh_mean(capillary_radius_um: float, cylinder_radius_um: float, diffusion_um2_per_min: float,
               uptake_per_min: float, vessel_value: float) -> float:
    """Area mean of :func:`krogh_profile` over the cylinder's tissue ``r_c < r < R``
    (closed form: the flux through the capillary wall equals the uptake, ``k cbar area``)."""
    L = math.sqrt(diffusion_um2_per_min / uptake_per_min)
    rc, R = capillary_radius_um, cylinder_radius_um
    a, b = special.k1(R / L), special.i1(R / L)
    denom = a * special.i0(rc / L) + b * special.k0(rc / L)
    # -dc/dr at r_c, times 2 pi r_c D, is the uptake k cbar pi (R^2 - r_c^2)
    slope = -vessel_value * (a * special.i1(rc / L) - b * special.k1(rc / L)) / (L * denom)
    flux = 2.0 * math.pi * rc * diffusion_um2_per_min * slope
    return float(flux / (uptake_per_min * math.pi * (R**2 - rc**2)))


def microvessel_map(lattice, normal_per_mm2: float, tumor_per_mm2: float, lesion_sites) -> np.ndarray:
    """(R, n_grid) float64 microvessels per um^2 of every site of each replicate: the
    tumor density at ``lesion_sites`` ((R,) list of (k,) site indices within a copy, the
    initial solid lesion), the normal density elsewhere."""
    out = np.full((lattice.replicates, lattice.n_grid), normal_per_mm2 * PER_MM2)
    for r, sites in enumerate(lesion_sites):
        out[r, sites] = tumor_per_mm2 * PER_MM2
    return out
