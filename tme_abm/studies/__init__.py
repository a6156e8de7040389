"""Studies: parameter sweeps on Dask, their summaries, experiments (the review's claims
as sweeps with a question and expected directions) and the statistics they share. They
read runs through tme_abm.io and never draw figures (tme_abm.viz does)."""
