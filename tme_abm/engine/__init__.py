"""Numerics: the array backend, counter-based random numbers, the lattice, moves on it,
the staged schedule and the reaction-diffusion solver. Nothing here knows about cells,
patients or run files; the biology builds on it."""
