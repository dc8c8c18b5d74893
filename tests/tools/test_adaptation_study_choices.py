"""The adaptation study's choices (MetaAlign α, alignment strength) read the target *dev* split only, and its
summary renders paired differences and the search line from per-run records (no training here: synthetic
records in the study's own format)."""
import argparse
import importlib.util
import json
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def study_mod():
    path = os.path.join(REPO, "benchmarks", "adaptation_study.py")
    spec = importlib.util.spec_from_file_location("adaptation_study_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(m, row, seed, dev, test):
    return {"row": row, "seed": seed, "seconds": 1.0,
            "ap": {m.TEST: {"mAP": test}, m.DEV: {"mAP": dev}, m.SOURCE_VAL: {"mAP": 99.0}}}


def _study(m, tmp_path, seeds=(0, 1, 2, 3, 4), sweep=(0, 1, 2)):
    args = argparse.Namespace(seeds=list(seeds), sweep_seeds=list(sweep), jobs=2, iters=400, lr=0.01,
                              out_dir=str(tmp_path / "out"), results=str(tmp_path / "res"),
                              target_half_width=3.0, max_seeds=8)
    return m.Study(args)


def test_alignment_strength_is_chosen_on_dev_not_test(study_mod):
    m = study_mod
    seeds = [0, 1, 2]
    rows = ["da_joint", *m.SEARCH]
    recs = {r: {s: _rec(m, r, s, dev=60.0, test=60.0) for s in seeds} for r in rows}
    dev_winner, test_winner = rows[1], rows[2]
    for s in seeds:
        recs[dev_winner][s]["ap"][m.DEV]["mAP"] = 70.0
        recs[test_winner][s]["ap"][m.TEST]["mAP"] = 90.0
    assert m.chosen_search_row(recs, seeds) == dev_winner
    # the shipped setting wins when nothing beats it on dev
    for s in seeds:
        recs["da_joint"][s]["ap"][m.DEV]["mAP"] = 80.0
    assert m.chosen_search_row(recs, seeds) == "da_joint"
    # a setting that diverged (dev AP50 ~0) on one seed is out of the search: no more seeds, never chosen
    for s in seeds:
        recs["da_joint"][s]["ap"][m.DEV]["mAP"] = 60.0
    diverging = rows[-1]
    recs[diverging] = {0: _rec(m, diverging, 0, dev=0.0, test=0.0)}
    assert m.diverged_rows(recs, m.SEARCH) == {diverging}
    assert m.chosen_search_row(recs, seeds) == dev_winner
    # no choice while a searched setting that has not diverged lacks one of the seeds
    del recs[dev_winner][2]
    assert m.chosen_search_row(recs, seeds) is None


def test_alpha_is_chosen_on_dev_not_test(study_mod, tmp_path):
    m = study_mod
    study = _study(m, tmp_path)
    recs = {f"metaalign_fo_a{a}": {s: _rec(m, "x", s, dev=60.0, test=60.0) for s in (0, 1, 2)} for a in m.ALPHAS}
    for s in (0, 1, 2):
        recs[f"metaalign_fo_a{m.ALPHAS[2]}"][s]["ap"][m.DEV]["mAP"] = 65.0
        recs[f"metaalign_fo_a{m.ALPHAS[0]}"][s]["ap"][m.TEST]["mAP"] = 95.0
    assert study.chosen_alpha(recs) == m.ALPHAS[2]


def test_summary_pairs_seeds_and_hides_unfinished_search_rows(study_mod, tmp_path):
    m = study_mod
    study = _study(m, tmp_path)
    seeds = [0, 1, 2, 3, 4]
    so = {s: _rec(m, "source_only", s, dev=50.0, test=50.0 + s) for s in seeds}
    da = {s: _rec(m, "da_joint", s, dev=55.0, test=52.0 + s) for s in seeds}  # +2 on every seed
    oracle = {s: _rec(m, "oracle", s, dev=90.0, test=90.0 + s) for s in seeds}
    searched = next(iter(m.SEARCH))
    recs = {"source_only": so, "da_joint": da, "oracle": oracle,
            searched: {s: _rec(m, searched, s, dev=54.0, test=99.0) for s in (0, 1, 2)}}
    table, _ = m.summarize(study, recs)
    da_line = next(line for line in table.splitlines() if line.startswith(f"| {m.ROWS['da_joint'][2]} |"))
    # paired difference: exactly +2.0 on every seed, zero width; gap closed 2 / 40 = 5%
    assert "+2.0 [+2.0, +2.0]" in da_line and "| 5% |" in da_line
    # a search row with only the sweep seeds shows in the dev-search line, not in the reported table
    assert not any(line.startswith(f"| {m.ROWS[searched][2]} |") for line in table.splitlines())
    assert "searched on the target dev split" in table and "(search incomplete)" in table


def test_summary_lists_paired_differences_among_teacher_rows(study_mod, tmp_path):
    m = study_mod
    study = _study(m, tmp_path)
    fair = {s: _rec(m, "fair_source_only", s, dev=70.0, test=70.0 + s) for s in (0, 1, 2)}
    teacher = {s: _rec(m, "teacher", s, dev=80.0, test=80.0 + 2 * s) for s in (0, 1, 2)}
    # MetaAlign on top of the teacher: −1, +1, +3 on the shared seeds 0–2; seed 3 has no teacher-only run
    meta = {s: _rec(m, "teacher_metaalign_fo", s, dev=80.0, test=80.0 + 2 * s - 1 + 2 * s) for s in (0, 1, 2, 3)}
    table, _ = m.summarize(study, {"fair_source_only": fair, "teacher": teacher, "teacher_metaalign_fo": meta})
    lines = table.splitlines()

    def pair_line(x, y):
        hits = [ln for ln in lines if ln.startswith(f"| {m.ROWS[x][2]} | {m.ROWS[y][2]} |")]
        assert len(hits) == 1, (x, y, hits)
        return hits[0]
    # teacher − fair: 10, 11, 12 → mean +11.0, better on every seed
    assert "| 3 | +11.0 [" in pair_line("teacher", "fair_source_only")
    assert pair_line("teacher", "fair_source_only").endswith("| 3 of 3 |")
    # MetaAlign − teacher pairs only seeds 0–2: −1, +1, +3 → mean +1.0, better on 2 of 3
    line = pair_line("teacher_metaalign_fo", "teacher")
    assert "| 3 | +1.0 [" in line and line.endswith("| 2 of 3 |")
    # a pair with a row that has not run is left out
    assert not any(ln.startswith(f"| {m.ROWS['teacher_metaalign_fo'][2]} | {m.ROWS['teacher_align'][2]} |")
                   for ln in lines)


def test_powered_comparison_adds_paired_seeds_until_the_interval_is_narrow(study_mod, tmp_path):
    m = study_mod
    study = _study(m, tmp_path)  # target ±3 AP50, at most 8 seeds, 2 jobs
    alpha = m.ALPHAS[0]
    ma, da = f"metaalign_fo_a{alpha}", "da_joint"
    recs = {f"metaalign_fo_a{a}": {s: _rec(m, "x", s, dev=60.0 + (a == alpha), test=60.0) for s in (0, 1, 2)}
            for a in m.ALPHAS}  # the sweep chose α = ALPHAS[0] on dev
    # MetaAlign vs DA joint: differences +10, -10, +10, -10, +10 (half width >> 3): two more seeds, both rows
    recs[ma].update({s: _rec(m, ma, s, dev=60.0, test=60.0 + (10 if s % 2 == 0 else -10)) for s in range(5)})
    recs[da] = {s: _rec(m, da, s, dev=60.0, test=60.0) for s in range(5)}
    # teacher + MetaAlign vs teacher + DA joint: +1.0 on every seed (zero width): nothing more to run
    recs["teacher_metaalign_fo"] = {s: _rec(m, "t", s, dev=80.0, test=81.0 + s) for s in range(5)}
    recs["teacher_align"] = {s: _rec(m, "t", s, dev=80.0, test=80.0 + s) for s in range(5)}
    assert study.powered_pairs(recs) == [(ma, da), ("teacher_metaalign_fo", "teacher_align")]
    assert study.powered_todo(recs) == [(ma, 5), (da, 5), (ma, 6), (da, 6)]
    # a seed one row already has is run only for the other; the rule stops at --max-seeds (8)
    recs[da][5] = _rec(m, da, 5, dev=60.0, test=60.0)
    assert study.powered_todo(recs) == [(ma, 5), (ma, 6), (da, 6)]
    for s in range(5, 8):
        recs[ma][s] = _rec(m, ma, s, dev=60.0, test=70.0 if s % 2 == 0 else 50.0)
        recs[da][s] = _rec(m, da, s, dev=60.0, test=60.0)
    assert study.powered_todo(recs) == []  # still wide, but out of seeds
    table, _ = m.summarize(study, recs)
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {m.ROWS[ma][2]} | {m.ROWS[da][2]} | 8 |"))
    assert "(wider than the target)" in line and line.endswith("| 4 of 8 |")
    # narrow differences stop the rounds at once, whatever their sign
    for s in range(8):
        recs[ma][s]["ap"][m.TEST]["mAP"] = recs[da][s]["ap"][m.TEST]["mAP"] - 2.0 + 0.1 * (s % 2)
    assert study.powered_todo(recs) == []
    table, _ = m.summarize(study, recs)
    assert "(target met)" in next(ln for ln in table.splitlines() if ln.startswith(f"| {m.ROWS[ma][2]} |"
                                                                                   f" {m.ROWS[da][2]} | 8 |"))


def test_summary_estimates_the_seeds_and_hours_the_powered_comparison_needs(study_mod, tmp_path):
    m = study_mod
    study = _study(m, tmp_path)  # target ±3 AP50, 2 jobs
    alpha = m.ALPHAS[0]
    ma, da = f"metaalign_fo_a{alpha}", "da_joint"
    recs = {f"metaalign_fo_a{a}": {s: _rec(m, "x", s, dev=60.0 + (a == alpha), test=60.0) for s in (0, 1, 2)}
            for a in m.ALPHAS}
    # paired differences +4, -4, +4, -4, +4 (std 4.38): 11 seeds at that spread; runs of 600 s and 400 s
    recs[ma].update({s: _rec(m, ma, s, dev=60.0, test=60.0 + (4 if s % 2 == 0 else -4)) for s in range(5)})
    recs[da] = {s: _rec(m, da, s, dev=60.0, test=60.0) for s in range(5)}
    for s in range(5):
        recs[ma][s]["seconds"], recs[da][s]["seconds"] = 600.0, 400.0
    recs[da][5] = _rec(m, da, 5, dev=60.0, test=60.0)  # a seed one row has already: only the other row's run
    recs[da][5]["seconds"] = 400.0
    (plan,) = study.power_plan(recs)
    assert plan["seeds"] == 5 and plan["needed"] == 11
    assert plan["runs"] == 11  # seeds 5..10 for MetaAlign, 6..10 for DA joint
    assert plan["hours"] == pytest.approx((6 * 600 + 5 * 400) / 2 / 3600)
    table, _ = m.summarize(study, recs)
    line = next(ln for ln in table.splitlines() if ln.startswith(f"| {m.ROWS[ma][2]} | {m.ROWS[da][2]} | 5 | ±"))
    assert line.endswith("| 11 | 11 | 0.8 |")
    # a pair already narrow enough says so and needs nothing
    for s in range(6):
        recs[ma].setdefault(s, _rec(m, ma, s, dev=60.0, test=60.0))
        recs[ma][s]["ap"][m.TEST]["mAP"] = 61.0 + 0.1 * (s % 2)
    (plan,) = study.power_plan(recs)
    assert plan["needed"] <= plan["seeds"] and plan["runs"] == 0
    table, _ = m.summarize(study, recs)
    assert "| met | 0 | 0.0 |" in table


def test_finished_runs_keep_only_their_final_checkpoint(study_mod, tmp_path):
    names = ["model_0000099.pth", "model_0000199.pth", "model_final.pth", "last_checkpoint", "metrics.json"]
    for n in names:
        (tmp_path / n).write_text("x")
    assert study_mod.prune_checkpoints(str(tmp_path)) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "metrics.json", "model_final.pth"]


def test_pairs_put_every_run_on_their_own_datasets(study_mod, tmp_path):
    """The foggy pair runs the demo configs as they are; a sim -> real pair overrides their datasets and class
    count (the oracle trains on the labelled target); a one-part pair reuses the sim2real base detector."""
    from metaalign_det.data.datasets.sim2real_render import PARTS

    m = study_mod
    assert m.SIM2REAL_PARTS == PARTS
    try:
        assert m.pair_overrides("source_only") == [] and m.TEST == "synthetic_foggy_test"
        m.use_pair("sim2real")
        assert (m.TEST, m.DEV, m.SOURCE_VAL) == ("sim2real_real_test", "sim2real_real_dev", "sim2real_sim_val")
        ov = dict(zip(m.pair_overrides("da_joint")[::2], m.pair_overrides("da_joint")[1::2]))
        assert ov == {"DATASETS.TRAIN": "('sim2real_sim_train',)", "DATASETS.TRAIN_TARGET": "('sim2real_real_train',)",
                      "MODEL.ROI_HEADS.NUM_CLASSES": "1"}
        assert m.pair_overrides("oracle")[1] == "('sim2real_real_train',)"
        own = m.Study(argparse.Namespace(out_dir=str(tmp_path / "o"), results=str(tmp_path / "r")))
        assert own.base_eval_record() == own.base_record()
        m.use_pair("sim2real_camera")
        assert m.pair_overrides("source_only")[3] == "('sim2real_camera_real_train',)"
        assert m.PAD_TARGET == "sim2real_camera_real_test" and m.PAD_SOURCE == "sim2real_sim_test"
        part = m.Study(argparse.Namespace(out_dir=str(tmp_path / "o2"), results=str(tmp_path / "r2")))
        assert part.base_dir == own.base_dir and part.base_record() == own.base_record()
        assert part.base_dir.endswith(os.path.join("output", "adaptation_study_sim2real", "base"))
        assert part.base_eval_record() == str(tmp_path / "r2" / "base_eval.json")  # its own target splits
        fresh = m.Study(argparse.Namespace(out_dir=str(tmp_path / "o3"), results=str(tmp_path / "r3"),
                                           base_out_dir=str(tmp_path / "b"), base_results=str(tmp_path / "b")))
        with pytest.raises(SystemExit, match="--pair sim2real --stage base first"):
            fresh.train_base()  # no sim2real base under these folders: a one-part pair does not train one
    finally:
        m.use_pair("foggy")


def test_parts_table_reads_each_one_part_study(study_mod, tmp_path):
    m = study_mod
    root = tmp_path / "results"
    assert m.parts_table(str(root)) == []  # nothing run yet
    test = m.PAIRS["sim2real_camera"]["test"]

    def put(row, seed, ap):
        d = root / "adaptation_study_sim2real_camera" / row
        d.mkdir(parents=True, exist_ok=True)
        (d / f"seed{seed}.json").write_text(json.dumps({"row": row, "seed": seed, "ap": {test: {"mAP": ap}}}))
    for s in (0, 1, 2):
        put("source_only", s, 50.0 + s)
        put("da_joint", s, 53.0 + s)  # +3 on every seed
    put("fair_source_only", 0, 70.0)  # one seed only: its gain is a single difference
    (root / "adaptation_study_sim2real_camera" / "base_eval.json").write_text(
        json.dumps({"ap": {test: {"mAP": 48.3}}}))
    lines = m.parts_table(str(root))
    rows = [ln for ln in lines if ln.startswith("| ")][1:]
    # source-only 50/51/52 and DA joint 53/54/55: t-intervals ±2.5 (t 4.303, SD 1, n 3); fair on one seed
    assert rows == ["| camera | 0, 1, 2 | 48.3 | 51.0 [48.5, 53.5] | 70.0 | 54.0 [51.5, 56.5] | +20.0 (1 seed) "
                    "| +3.0 [+3.0, +3.0] |"]


def test_pad_builds_each_row_from_a_config_its_checkpoint_fits(study_mod):
    """SWDA rows' box predictor reads the context vectors: their PAD uses their own config, at the same levels."""
    m = study_mod
    from metaalign_det.cli import setup_cfg

    assert m.pad_config("da_joint") == m.pad_config("source_only") == m.pad_config() == "da_joint_R18_FPN.yaml"
    demo = os.path.join(REPO, "configs", "demo")
    ref = setup_cfg(os.path.join(demo, m.pad_config()), [])
    for row in m.SWDA_ROWS:
        cfg = setup_cfg(os.path.join(demo, m.pad_config(row)), [])
        assert cfg.MODEL.SWDA.LOCAL_CONTEXT and cfg.MODEL.ROI_HEADS.NAME == "ContextStandardROIHeads"
        assert cfg.MODEL.DA_HEADS.IMG_IN_FEATURES == ref.MODEL.DA_HEADS.IMG_IN_FEATURES  # the PAD levels


def test_runs_pair_only_with_the_base_detector_their_record_names(study_mod, tmp_path, capsys):
    """A base retrained elsewhere is a different detector: the study refuses to add runs from it (exit 2, naming
    both digests or the missing weights), and the summary leaves out records trained from another base."""
    m = study_mod
    base_out, res = tmp_path / "b", tmp_path / "res"
    (base_out / "base").mkdir(parents=True)
    res.mkdir()
    weights = base_out / "base" / "model_final.pth"
    weights.write_bytes(b"recorded weights")
    args = argparse.Namespace(seeds=[0, 1], sweep_seeds=[0, 1, 2], jobs=2, iters=400, lr=0.01,
                              out_dir=str(tmp_path / "out"), results=str(res), base_out_dir=str(base_out),
                              base_results=str(res), target_half_width=3.0, max_seeds=8)
    study = m.Study(args)
    digest = study.base_digest()
    assert len(digest) == 16 and int(digest, 16) >= 0
    (res / "base.json").write_text(json.dumps({"weights_sha256": digest}))
    study.check_base()  # the recorded weights: no complaint
    for seed, base in ((0, digest), (1, "0" * 16)):
        (res / "source_only").mkdir(exist_ok=True)
        rec = {**_rec(m, "source_only", seed, dev=50.0, test=50.0), "base_sha256": base}
        (res / "source_only" / f"seed{seed}.json").write_text(json.dumps(rec))
    legacy = _rec(m, "source_only", 2, dev=50.0, test=50.0)  # written before records named their base
    (res / "source_only" / "seed2.json").write_text(json.dumps(legacy))
    assert sorted(study.load()["source_only"]) == [0, 2]
    assert sorted(study.load(any_base=True)["source_only"]) == [0, 1, 2]

    weights.write_bytes(b"retrained weights")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        m.Study(args).check_base()
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "is not the base detector" in err and digest in err and "--results" in err
    weights.unlink()
    with pytest.raises(SystemExit) as e:
        m.Study(args).train_base()  # would retrain a different base into the recorded study: refused
    err = capsys.readouterr().err
    assert e.value.code == 2 and "weights are not at" in err and str(weights) in err
    assert not (base_out / "base" / "run.log").exists()


def test_a_study_on_a_second_base_reuses_the_alpha_chosen_on_the_first_dev_split(study_mod, tmp_path):
    m = study_mod
    first = tmp_path / "first"
    for a in m.ALPHAS:
        for s in (0, 1, 2):
            d = first / f"metaalign_fo_a{a}"
            d.mkdir(parents=True, exist_ok=True)
            dev = 70.0 if a == m.ALPHAS[1] else 60.0
            (d / f"seed{s}.json").write_text(json.dumps({**_rec(m, d.name, s, dev=dev, test=0.0),
                                                          "base_sha256": "a" * 16}))
    study = _study(m, tmp_path)
    assert study.alpha() is None  # no sweep in its own results
    study.args.alpha_results = str(first)
    assert study.alpha() == m.ALPHAS[1]
