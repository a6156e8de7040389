"""Experiments end to end: every shipped experiment's --quick variant runs on one shared
Dask cluster and writes its tables, figures and report with statistics that match its
outcome table. The review's directions are NOT asserted here: they come from the full
runs and are reported in docs/validation.md."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import yaml
from dask.distributed import LocalCluster
from scipy import stats

from tme_abm.config import load_config
from tme_abm.io import open_run, run
from tme_abm.io.runner import replicates_of, run_batch
from tme_abm.model import TMEModel
from tme_abm.studies.experiments import analyse, available, find, load, run_experiment
from tme_abm.studies.experiments.analysis import compare, expectations, trend, verdict
from tme_abm.studies.experiments.spec import CORRECTIONS, GROUPS, RATES, ExperimentConfig
from tme_abm.studies.measures import calibration, calibration_table
from tme_abm.studies.statistics import adjusted_p, auc_table, roc_auc, wilson
from tme_abm.studies.sweep import Executor, SweepError, design_points
from tme_abm.viz.study_figures import experiment_figures

NAMES = ["a2ar_adenosine", "antigen_escape", "burden", "burden_scan", "debulking", "engineering", "myeloid",
         "scale_consistency", "solid_vs_heme", "surrogate"]
VERDICTS = {"reproduced", "same direction, not significant", "not reproduced (no difference)",
            "not reproduced (opposite direction)", "not reproduced (opposite direction), significant",
            "inconclusive (no data)", "agree (no difference found)", "differ"}


@pytest.fixture(scope="module")
def scheduler():
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    yield cluster.scheduler_address
    cluster.close()


@pytest.fixture(scope="module")
def quick_runs(scheduler, tmp_path_factory):
    root = tmp_path_factory.mktemp("experiments")
    out = {}
    for name in NAMES:
        out[name] = run_experiment(name, root / name, Executor(scheduler=scheduler, progress=False), quick=True)
        out[name].update(experiment_figures(out[name]["out"]))
    return out


@pytest.mark.slow
def test_every_shipped_experiment_is_listed_and_loads():
    assert available() == NAMES
    for name in NAMES:
        spec, _, exp, _ = load(name)
        assert exp.question and exp.expect and exp.correction in CORRECTIONS, name
        assert exp.assessment_day == 28 and not exp.exploratory, name
        # at least 20 runs per arm: replicates, or the sampled points of a surrogate split into two groups
        assert (spec.design.samples >= 40 if exp.analysis == "surrogate" else spec.replicates >= 20), name
        quick, _, _, _ = load(name, quick=True)
        assert quick.name == f"{name}-quick" and quick.replicates == exp.quick.replicates


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_quick_experiment_writes_tables_figures_and_report(quick_runs, name):
    w = quick_runs[name]
    spec, _, exp, _ = load(name, quick=True)
    points = design_points(spec)
    assert w["failed"] == 0
    table = pd.read_csv(w["out"] / "outcomes.csv")
    assert len(table) == len(points) * spec.replicates and (table["status"] == "complete").all()
    arms = pd.read_csv(w["arms"])
    names = list(arms["arm"])
    responded = table["response_at_assessment"].isin(["CR", "PR"])
    if exp.analysis == "surrogate":  # arms: durable responders and the others
        groups = [table[responded], table[~responded]]
        assert names == list(GROUPS) and list(arms["runs"]) == [len(g) for g in groups]
    else:
        groups = [table[table["point"] == i] for i in range(len(points))]
        assert len(names) == len(points) and list(arms["runs"]) == [spec.replicates] * len(points)
    # the per-arm statistics are those of the outcome table
    for i, g in enumerate(groups):
        if g.empty:
            continue
        k = int(g["response_at_assessment"].isin(["CR", "PR"]).sum())
        a = arms.iloc[i]
        assert a["response_rate"] == pytest.approx(k / len(g))
        assert (a["response_rate_ci_low"], a["response_rate_ci_high"]) == pytest.approx(wilson(k, len(g)))
        assert a["severe_crs_rate"] == pytest.approx((g["max_crs_grade"] >= 3).mean())
        assert a["peak_blood_car_t_median"] == pytest.approx(g["peak_blood_car_t"].median())
    comps = pd.read_csv(w["comparisons"])
    assert set(comps["against"]) == {exp.reference or names[0]}
    assert comps["p_value"].dropna().between(0, 1).all()
    exps = pd.read_csv(w["expectations"])
    assert len(exps) == len(exp.expect) and exps["declared"].all() and set(exps["verdict"]) <= VERDICTS
    assert (table["assessment_day"] == exp.quick.assessment_day).all()
    tc = pd.read_csv(w["timecourse"])
    assert set(tc["series"]) == set(exp.series) and set(tc["arm"]) == {n for n, g in zip(names, groups) if len(g)}
    most = tc.groupby("arm")["runs"].max()
    assert (most <= arms.set_index("arm")["runs"].reindex(most.index)).all()
    assert tc["day"].min() < 0 < tc["day"].max()
    pngs = ["outcomes_png", "timecourse_png"] + (["roc_png"] if exp.analysis == "surrogate" else [])
    for key in pngs:
        img = mpimg.imread(w[key])
        assert img.shape[0] >= 300 and img.shape[1] >= 400 and img[..., :3].std() > 0.01, key
    report = w["report"].read_text()
    assert " ".join(exp.question.split()) in report and all(n in report for n in names)
    result = json.loads(w["result"].read_text())
    assert result["runs"] == len(table) and len(result["expectations"]) == len(exp.expect)
    if exp.analysis == "surrogate":
        auc = pd.read_csv(w["auc"])
        assert list(auc["predictor"]) == exp.predictors
        label = table["response_at_assessment"].isin(["CR", "PR"]).to_numpy()
        for _, r in auc.iterrows():
            expected = roc_auc(table[r["predictor"]].to_numpy(float), label)
            assert (math.isnan(r["auc"]) and math.isnan(expected)) or r["auc"] == pytest.approx(expected)


@pytest.mark.slow
def test_rerun_runs_nothing_and_the_analysis_is_reproduced(quick_runs, scheduler):
    w = quick_runs["solid_vs_heme"]
    before = {k: w[k].read_bytes() for k in ("arms", "comparisons", "expectations", "timecourse")}
    again = run_experiment("solid_vs_heme", w["out"], Executor(scheduler=scheduler, progress=False), quick=True)
    table = pd.read_csv(again["out"] / "outcomes.csv")
    assert not table["ran"].any()
    assert {k: again[k].read_bytes() for k in before} == before
    assert analyse(w["out"])["arms"].read_bytes() == before["arms"]


def test_roc_auc_against_pair_counting():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 6, 40).astype(float)  # many ties
    label = rng.random(40) < 0.4
    pos, neg = score[label], score[~label]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(score, label) == pytest.approx(pairs / (len(pos) * len(neg)))
    assert roc_auc(np.arange(6.0), np.array([0, 0, 0, 1, 1, 1], bool)) == 1.0
    assert roc_auc(-np.arange(6.0), np.array([0, 0, 0, 1, 1, 1], bool)) == 0.0
    assert math.isnan(roc_auc(np.arange(3.0), np.ones(3, bool)))


def test_auc_bootstrap_separates_a_perfect_from_a_useless_predictor():
    rng = np.random.default_rng(5)
    label = np.repeat([True, False], 30)
    runs = pd.DataFrame({"responded": label, "good": label + rng.random(60) * 0.5, "noise": rng.random(60)})
    auc, diffs = auc_table(runs, ["noise", "good"], seed=1, n_boot=500)
    a = auc.set_index("predictor")
    assert a.loc["good", "auc"] == 1.0 and a.loc["good", "ci_low"] == 1.0
    assert a.loc["noise", "ci_low"] < 0.5 < a.loc["noise", "ci_high"]
    d, lo, hi, p = diffs[("good", "noise")]
    assert d > 0 and lo > 0 and p < 0.05


def test_compare_uses_fisher_for_rates_and_mann_whitney_for_outcomes():
    runs = pd.DataFrame({"arm": ["a"] * 5 + ["b"] * 5, "responded": [True] * 5 + [False] * 5,
                         "peak_blood_car_t": [5.0, 6, 7, 8, 9, 1, 2, 3, 4, 4.5]})
    c = compare(runs, "response_rate", "a", "b")
    assert c["difference"] == 1.0 and c["p_value"] == pytest.approx(stats.fisher_exact([[5, 0], [0, 5]])[1])
    c = compare(runs, "peak_blood_car_t", "a", "b")
    assert c["value"] == 7.0 and c["value_against"] == 3.0
    assert c["p_value"] == pytest.approx(stats.mannwhitneyu([5, 6, 7, 8, 9], [1, 2, 3, 4, 4.5]).pvalue)
    assert set(RATES) >= {"response_rate", "severe_crs_rate"}


def test_trend_is_kendall_tau_of_arm_position_against_each_run():
    runs = pd.DataFrame({"arm": ["hi"] * 4 + ["mid"] * 4 + ["lo"] * 4,
                         "responded": [0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1],
                         "peak_blood_car_t": [1.0, 2, 3, 4, 3, 4, 5, 6, 6, 7, 8, 9]})
    tau, p = trend(runs, "response_rate", ["hi", "mid", "lo"])
    ref = stats.kendalltau([0] * 4 + [1] * 4 + [2] * 4, [0, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1])
    assert tau == pytest.approx(ref.statistic) and p == pytest.approx(ref.pvalue) and tau > 0
    tau_down, _ = trend(runs, "peak_blood_car_t", ["lo", "mid", "hi"])
    assert tau_down < 0  # listed in the wrong order: the trend comes out negative
    assert trend(runs.assign(responded=1), "response_rate", ["hi", "lo"]) == (0.0, 1.0)


@pytest.mark.parametrize("diff, p, expect", [(0.3, 0.01, "reproduced"), (0.3, 0.2, "same direction, not significant"),
                                             (0.0, 1.0, "not reproduced (no difference)"),
                                             (-0.3, 0.2, "not reproduced (opposite direction)"),
                                             (-0.3, 0.01, "not reproduced (opposite direction), significant"),
                                             (math.nan, math.nan, "inconclusive (no data)")])
def test_verdicts(diff, p, expect):
    assert verdict(diff, p) == expect


def _spec(tmp_path, **experiment):
    data = yaml.safe_load(find("myeloid").read_text())
    data["base"] = str(find("myeloid").parent / data["base"])
    data["experiment"].update(experiment)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


TA = {"test": "fisher_exact", "alpha": 0.05}


@pytest.mark.parametrize("change, message", [
    ({"arms": ["one", "two"]}, "names 2 arms but the design has 3 points"),
    ({"arms": ["x", "x", "y"]}, "names must be unique"),
    ({"reference": "nobody"}, "experiment.reference 'nobody' is not an arm"),
    ({"expect": [{"metric": "response_rate", "higher": "low myeloid", "lower": "nobody", **TA}]},
     "experiment.expect.0"),
    ({"expect": [{"metric": "happiness", "higher": "low myeloid", "lower": "high myeloid", **TA}]},
     "experiment.expect.0"),
    ({"series": ["tumor_mood"]}, "series"),
    ({"expect": [{"metric": "response_rate", "higher": "low myeloid", **TA}]}, "give both higher and lower"),
    ({"expect": [{"metric": "response_rate", "higher": "low myeloid", "lower": "high myeloid",
                  "increasing": ["low myeloid", "high myeloid"], **TA}]}, "either higher and lower, increasing"),
    ({"expect": [{"metric": "response_rate", "equal": ["low myeloid"], **TA}]}, "equal takes two arms"),
    ({"expect": [{"metric": "response_rate", "increasing": ["low myeloid", "nobody"], "test": "kendall_tau_b",
                  "alpha": 0.05}]}, "experiment.expect.0"),
    ({"expect": [{"metric": "response_rate", "higher": "low myeloid", "lower": "high myeloid",
                  "test": "mann_whitney_u", "alpha": 0.05}]}, "a rate expectation is tested by 'fisher_exact'"),
    ({"exploratory": [{"metric": "peak_blood_car_t", "higher": "low myeloid", "lower": "high myeloid", **TA}]},
     "experiment.exploratory.0.test 'fisher_exact': a continuous expectation is tested by 'mann_whitney_u'"),
    ({"expect": [{"metric": "response_rate", "higher": "low myeloid", "lower": "high myeloid",
                  "test": "fisher_exact"}]}, "alpha"),
    ({"expect": []}, "expect"),
    ({"correction": "bonferroni"}, "correction"),
    ({"assessment_day": 18}, "experiment.assessment_day 18: point 0 has patient.assessment_day 28 and ends on day 28"),
])
def test_bad_experiment_blocks_are_refused_with_the_file_and_key(tmp_path, change, message):
    path = _spec(tmp_path, **change)
    with pytest.raises(SweepError, match="bad.yaml") as err:
        load(path)
    assert message in str(err.value)


@pytest.mark.slow
def test_cli_lists_experiments_and_names_an_unknown_one():
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "experiment", "--list"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and all(f"{n}:" in r.stdout for n in NAMES), r.stderr
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "experiment", "no_such_thing", "--quick"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no experiment 'no_such_thing'" in r.stderr and "burden" in r.stderr


@pytest.mark.slow
def test_calibration_kills_per_car_t_per_day_counts_each_kill_of_the_last_day(tmp_path):
    """calibration(run) reads kills from the tumor_killed count (cleared after 1440 min);
    checked against kills tracked cell by cell in a model stepped by hand."""
    over = {"lattice.shape": [40, 40], "tumor.radius_sites": 8, "time.duration_days": 2.0,
            "car_t.initial_cells": 60, "seed": 5}
    m = TMEModel(find("burden").parent.parent / "quickstart.yaml", **over)
    killed_at, effector = {}, []
    while m.running:
        m.step()
        d = m.tumor.data
        for i, t in zip(d["id"][d["state"] == 3].tolist(), d["death_min"][d["state"] == 3].tolist()):
            killed_at.setdefault(i, t)
        effector.append((m.time_min, m.car_t.counts()["car_t_effector"]))
    path = tmp_path / "cal.h5"
    run(m.config, path, quiet=True)
    cal = calibration(open_run(path))
    assert len(cal["kills_per_car_t_per_day"]) == 2
    for day, value in enumerate(cal["kills_per_car_t_per_day"], start=1):
        lo, hi = (day - 1 - m.config.start_day) * 1440, (day - m.config.start_day) * 1440  # model minutes
        kills = sum(lo < t <= hi for t in killed_at.values())
        eff = np.mean([n for t, n in effector if lo < t <= hi])
        assert kills > 5 and value * eff == pytest.approx(kills, abs=1.0)


@pytest.mark.slow
def test_calibration_table_summarizes_the_runs_of_a_folder(tmp_path):
    """Each row is the median and quartiles of that measure over the folder's runs (CRS
    measures over the runs with CRS), checked against the runs read one by one; the CLI
    prints it for a folder."""
    cfg = load_config(find("burden").parent.parent / "quickstart.yaml",
                      ["lattice.shape=[40,40]", "tumor.radius_sites=8", "time.duration_days=2.5",
                       "therapy=[{kind: infusion, day: 0, dose_cells: 1.0e8}]"])
    cfgs, paths = replicates_of(cfg, 3, tmp_path / "cal")
    run_batch(cfgs, paths, quiet=True)
    table = calibration_table(tmp_path / "cal").set_index("measure")
    runs = [open_run(p) for p in paths]
    peak = np.array([calibration(r)["peak_blood_car_t_day"] for r in runs])
    assert table.loc["blood CAR T peak day", "median"] == pytest.approx(np.median(peak))
    assert table.loc["blood CAR T peak day", "q25"] == pytest.approx(np.quantile(peak, 0.25))
    folds = [r.outcomes["expansion_fold"] for r in runs]
    assert table.loc["expansion fold (peak / day 1)", "max"] == pytest.approx(max(folds))
    assert np.isfinite(folds).all()
    assert table.loc["blood CAR T on day 90 (cells/uL)", "runs"] == 0  # the runs end on day 2.5
    grades = [r.outcomes["max_crs_grade"] for r in runs]
    assert table.loc["share with severe CRS (grade >= 3)", "median"] == pytest.approx(np.mean(np.array(grades) >= 3))
    r = subprocess.run([sys.executable, "-m", "tme_abm.cli", "summarize", str(tmp_path / "cal")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "share with severe CRS" in r.stdout, r.stderr


# ---- the protocol: declared tests, their correction, exploratory tests apart --------------

def test_holm_and_benjamini_hochberg_against_hand_computation():
    p = [0.04, 0.01, 0.03, 0.2]
    # Holm: sorted 0.01, 0.03, 0.04, 0.2 times 4, 3, 2, 1 = 0.04, 0.09, 0.08, 0.2; running max
    np.testing.assert_allclose(adjusted_p(p, "holm"), [0.09, 0.04, 0.09, 0.2])
    # BH: sorted times 4/1, 4/2, 4/3, 4/4 = 0.04, 0.06, 0.0533, 0.2; running min from the top
    np.testing.assert_allclose(adjusted_p(p, "fdr_bh"), [0.16 / 3, 0.04, 0.16 / 3, 0.2])
    # a test without data counts as p = 1 in the family and stays NaN
    np.testing.assert_allclose(adjusted_p([0.01, math.nan], "holm"), [0.02, math.nan])
    assert adjusted_p([0.3], "holm")[0] == 0.3 and adjusted_p([0.9, 0.95], "holm").max() == 1.0


def _protocol(**changes) -> ExperimentConfig:
    block = {"question": "q", "arms": ["a", "b"], "correction": "holm", "expect": [
        {"metric": "response_rate", "higher": "a", "lower": "b", "test": "fisher_exact", "alpha": 0.05},
        {"metric": "peak_blood_car_t", "higher": "a", "lower": "b", "test": "mann_whitney_u", "alpha": 0.04},
        {"metric": "burden_ratio_at_end", "higher": "a", "lower": "b", "test": "mann_whitney_u", "alpha": 0.05}],
        "exploratory": [{"metric": "peak_blood_car_t", "higher": "a", "lower": "b", "test": "mann_whitney_u",
                         "alpha": 0.05, "claim": "looked at afterwards"}]}
    return ExperimentConfig.model_validate({**block, **changes})


RUNS = pd.DataFrame({"arm": ["a"] * 8 + ["b"] * 8,
                     "responded": [1] * 8 + [1] + [0] * 7,
                     "peak_blood_car_t": [5, 6, 7, 8, 9, 10, 11, 12, 1, 2, 3, 4, 5.5, 6.5, 7.5, 8.5],
                     "burden_ratio_at_end": [3, 4, 5, 6, 7, 8, 9, 10, 1, 2, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]})


@pytest.mark.parametrize("correction", ["holm", "fdr_bh"])
def test_declared_tests_are_corrected_together_and_exploratory_ones_apart(correction):
    rows = expectations(RUNS, _protocol(correction=correction))
    raw = [stats.fisher_exact([[8, 0], [1, 7]]).pvalue,
           stats.mannwhitneyu(RUNS["peak_blood_car_t"][:8], RUNS["peak_blood_car_t"][8:]).pvalue,
           stats.mannwhitneyu(RUNS["burden_ratio_at_end"][:8], RUNS["burden_ratio_at_end"][8:]).pvalue]
    assert raw[0] < 0.002 and 0.02 < raw[1] < 0.021 and raw[2] > 0.2
    declared, explo = rows[rows["declared"]], rows[~rows["declared"]]
    np.testing.assert_allclose(declared["p_value"], raw)
    if correction == "holm":  # by hand: 3 p1, max(3 p1, 2 p2), max(.., p3)
        by_hand = [3 * raw[0], 2 * raw[1], raw[2]]
    else:  # by hand: 3 p1 / 1, 3 p2 / 2, 3 p3 / 3 (already increasing)
        by_hand = [3 * raw[0], 1.5 * raw[1], raw[2]]
    np.testing.assert_allclose(declared["p_adjusted"], by_hand)
    assert (declared["correction"] == correction).all()
    # the second test's raw p (0.021) is below its alpha 0.04; Holm's 0.041 is not, BH's 0.031 is
    second = declared.iloc[1]["verdict"]
    assert second == ("same direction, not significant" if correction == "holm" else "reproduced")
    assert list(declared["verdict"])[::2] == ["reproduced", "same direction, not significant"]
    # the exploratory test: the same comparison, uncorrected and marked
    assert len(explo) == 1 and explo.iloc[0]["p_value"] == pytest.approx(raw[1])
    assert math.isnan(explo.iloc[0]["p_adjusted"]) and explo.iloc[0]["correction"] == "none"
    assert explo.iloc[0]["verdict"] == "reproduced"
    # adding an exploratory test changes nothing declared
    alone = expectations(RUNS, _protocol(correction=correction, exploratory=[]))
    pd.testing.assert_frame_equal(alone, declared)


def _edit_experiment(folder, change) -> None:
    """Edit the experiment block recorded in a folder's sweep.yaml, as a rerun with an
    edited spec file would."""
    doc = yaml.safe_load((folder / "sweep.yaml").read_text())
    change(doc["spec"]["experiment"])
    (folder / "sweep.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


@pytest.mark.slow
def test_an_undeclared_test_is_refused_and_an_exploratory_one_reported_apart(quick_runs, scheduler, tmp_path):
    folder = tmp_path / "escape"
    shutil.copytree(quick_runs["antigen_escape"]["out"], folder)
    added = {"metric": "peak_blood_car_t", "higher": "CAR T", "lower": "no CAR T", "test": "mann_whitney_u",
             "alpha": 0.05, "claim": "added after the runs"}
    # through the spec file: refused before anything runs or is written
    data = yaml.safe_load(find("antigen_escape").read_text())
    data["base"] = str(find("antigen_escape").parent / data["base"])
    data["experiment"]["expect"].append(added)
    spec_path = tmp_path / "antigen_escape.yaml"
    spec_path.write_text(yaml.safe_dump(data))
    manifest = (folder / "sweep.yaml").read_bytes()
    with pytest.raises(SweepError, match=r"experiment.expect.1 \(added after the runs\) was not declared"):
        run_experiment(spec_path, folder, Executor(scheduler=scheduler, progress=False), quick=True)
    assert (folder / "sweep.yaml").read_bytes() == manifest
    # through the recorded block: the analysis refuses too, and a dropped or changed test
    _edit_experiment(folder, lambda e: e["expect"].append(added))
    with pytest.raises(SweepError, match="differs from the one declared before the runs"):
        analyse(folder)
    _edit_experiment(folder, lambda e: (e["expect"].pop(), e.update(correction="fdr_bh")))
    with pytest.raises(SweepError, match="experiment.correction was 'holm', now 'fdr_bh'"):
        analyse(folder)
    # the same test as exploratory: analysed, and printed apart from the declared one
    _edit_experiment(folder, lambda e: (e.update(correction="holm"), e.update(exploratory=[added])))
    w = analyse(folder)
    exps = pd.read_csv(w["expectations"])
    assert list(exps["declared"]) == [True, False] and exps["claim"].iloc[1] == "added after the runs"
    report = w["report"].read_text()
    declared_at, exploratory_at = report.index("**Declared before the runs**"), report.index("**Exploratory**")
    assert declared_at < report.index("CAR T pressure selects") < exploratory_at < report.index("added after the runs")
    assert "CAR T pressure selects" not in report[exploratory_at:]
    result = json.loads(w["result"].read_text())
    assert len(result["expectations"]) == 1 and result["exploratory"][0]["claim"] == "added after the runs"


@pytest.mark.slow
def test_an_ensemble_grows_without_rerunning_finished_replicates(quick_runs, scheduler, tmp_path):
    folder = tmp_path / "escape"
    shutil.copytree(quick_runs["antigen_escape"]["out"], folder)
    before = {p.name: p.read_bytes() for p in (folder / "runs").glob("*.h5")}
    executor = Executor(scheduler=scheduler, progress=False)
    grown = run_experiment("antigen_escape", folder, executor, quick=True, replicates=3)
    table = pd.read_csv(folder / "outcomes.csv")
    assert len(table) == 6 and set(table[table["ran"]]["replicate"]) == {2} and table["ran"].sum() == 2
    assert {n: (folder / "runs" / n).read_bytes() for n in before} == before
    assert list(pd.read_csv(grown["arms"])["runs"]) == [3, 3]
    # read back at the smaller size: nothing runs, the analysis counts 2 per arm
    files = {p.name: p.read_bytes() for p in (folder / "runs").glob("*.h5")}
    again = run_experiment("antigen_escape", folder, executor, quick=True, replicates=2)
    table = pd.read_csv(folder / "outcomes.csv")
    assert len(files) == 6 and not table[table["replicate"] < 2]["ran"].any()
    assert {p.name: p.read_bytes() for p in (folder / "runs").glob("*.h5")} == files
    assert pd.read_csv(again["arms"])["runs"].tolist() == [2, 2]
    assert again["arms"].read_bytes() == quick_runs["antigen_escape"]["arms"].read_bytes()
