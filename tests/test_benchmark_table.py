"""README's benchmark table is generated from benchmarks/results/*.json and kept in sync."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _table_module():
    spec = importlib.util.spec_from_file_location("bench_table", ROOT / "benchmarks/table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_table_is_what_the_json_says() -> None:
    mod = _table_module()
    readme = mod.README.read_text(encoding="utf-8")
    assert mod.render_all(readme) == readme, "run python benchmarks/table.py"


def test_a_changed_result_changes_the_table_and_a_missed_goal_says_so(tmp_path: Path) -> None:
    mod = _table_module()
    shutil.copytree(ROOT / "benchmarks/results", tmp_path, dirs_exist_ok=True)
    path = tmp_path / "scoring.json"
    r = json.loads(path.read_text())
    r["peak_rss_mb"] = {"10000": 100.0, "1000000": 200.0}
    path.write_text(json.dumps(r))
    row = next(line for line in mod.table(tmp_path).splitlines()
               if line.startswith("| `scoring.py --items"))
    assert "100 MB (10,000 users) → 200 MB (1,000,000): 2.000×, **missed**" in row
    r["peak_rss_mb"] = {"10000": 100.0, "1000000": 130.0}
    path.write_text(json.dumps(r))
    assert "1.300×, met" in mod.table(tmp_path)


def test_render_refuses_a_readme_without_markers() -> None:
    mod = _table_module()
    with pytest.raises(SystemExit, match="markers"):
        mod.render("# no table here\n", "| x |")


def test_an_unfinished_mutation_run_is_never_called_met(tmp_path: Path) -> None:
    mod = _table_module()
    module = {"mutants": 10, "killed": 9, "survived": 1, "not_checked": 4, "kill_rate": 0.9}
    result = {"modules": {"m": module}, "total": {"killed": 9, "scored": 10, "kill_rate": 0.9}}
    (tmp_path / "mutation.json").write_text(json.dumps(result))
    assert "**incomplete** (4 mutants not checked)" in mod.table(tmp_path)
    module["not_checked"] = 0
    (tmp_path / "mutation.json").write_text(json.dumps(result))
    assert mod.table(tmp_path).endswith("m 90%: met |")


def test_a_module_with_nothing_checked_has_no_rate_and_is_not_the_lowest(tmp_path: Path
                                                                          ) -> None:
    mod = _table_module()
    done = {"mutants": 10, "killed": 9, "survived": 1, "not_checked": 0, "kill_rate": 0.9}
    none = {"mutants": 5, "killed": 0, "survived": 0, "not_checked": 5, "kill_rate": None}
    result = {"modules": {"a": done, "b": none},
              "total": {"killed": 9, "scored": 10, "kill_rate": 0.9}}
    (tmp_path / "mutation.json").write_text(json.dumps(result))
    row = mod.table(tmp_path)
    assert "9/10 = 90%; lowest a 90%: **incomplete** (5 mutants not checked)" in row


def test_the_platform_table_shows_both_values_and_bolds_a_difference_that_excludes_zero(
        tmp_path: Path) -> None:
    mod = _table_module()
    row = {"model": "maml", "without": "platform_cold", "with": "platform_cold+cross",
           "k": 1, "value_without": 0.1, "value_with": 0.15, "diff": 0.05, "ci_low": 0.01,
           "ci_high": 0.09, "users": 30}
    flat = {**row, "k": 3, "value_with": 0.1, "diff": 0.0, "ci_low": -0.02, "ci_high": 0.02}
    per_platform = {**row, "without": "platform_cold@p0", "with": "platform_cold+cross@p0",
                    "k": "all"}
    (tmp_path / "platforms.json").write_text(json.dumps({
        "params": "p.yaml", "dataset": "synthetic", "catalogue_metric": "ndcg@20",
        "confidence": 0.95, "tasks": {"1": 30, "3": 28},
        "cross_platform": [row, flat, per_platform]}))
    text = mod.platforms_table(tmp_path)
    assert "| maml | 0.100 → 0.150, **+0.050 [+0.010, +0.090]** | 0.100 → 0.100, " \
           "+0.000 [-0.020, +0.020] |" in text
    assert "K=all" not in text and "Tasks per K: K=1: 30, K=3: 28." in text


def test_the_large_data_pipeline_row_checks_memory_and_time_per_interaction(tmp_path: Path
                                                                            ) -> None:
    mod = _table_module()
    ten = {"interactions": 10_000_000, "users": 200_000, "items": 20_000,
           "seconds": {"ingest": 5.0, "validate": 13.0, "episodes": 10.0, "total": 28.0},
           "peak_rss_mb": {"ingest": 1000.0, "validate": 2048.0, "episodes": 2000.0,
                           "max": 2048.0},
           "goal": {"seconds": 120, "peak_rss_mb": 6144}}
    fifty = {**ten, "interactions": 50_000_000, "users": 1_000_000, "items": 100_000,
             "seconds": {"ingest": 25.0, "validate": 60.0, "episodes": 65.0, "total": 150.0},
             "peak_rss_mb": {"ingest": 4096.0, "validate": 6144.0, "episodes": 7168.0,
                             "max": 7168.0},
             "microseconds_per_interaction": 3.0, "per_interaction_ratio": 1.071,
             "reference": {"interactions": 10_000_000, "microseconds_per_interaction": 2.8},
             "goal": {"peak_rss_mb": 8192, "per_interaction_ratio": 1.2}}
    (tmp_path / "data_pipeline.json").write_text(json.dumps(ten))
    (tmp_path / "data_pipeline_50000000.json").write_text(json.dumps(fifty))
    rows = [line for line in mod.table(tmp_path).splitlines() if "data_pipeline" in line]
    assert rows[0].endswith("28 s (ingest 5, validate 13, episodes 10), peak RSS 2.0 GB "
                            "(ingest 1.0, validate 2.0, episodes 2.0): met |")
    assert rows[1].endswith("peak RSS 7.0 GB (ingest 4.0, validate 6.0, episodes 7.0); "
                            "3.00 µs per interaction = 1.07 × 10M's 2.80: met |")
    for change in ({"per_interaction_ratio": 1.25},
                   {"peak_rss_mb": {**fifty["peak_rss_mb"], "max": 8200.0}}):
        (tmp_path / "data_pipeline_50000000.json").write_text(json.dumps({**fifty, **change}))
        assert mod.table(tmp_path).count("**missed**") == 1


def test_the_multilingual_table_shows_each_comparison_and_the_goals(tmp_path: Path) -> None:
    mod = _table_module()
    base = {"model": "maml", "scenario": "item_cold", "k": 1, "value_without": 0.05,
            "value_with": 0.12, "diff": 0.07, "ci_low": 0.05, "ci_high": 0.09, "users": 900}
    rows = [{**base, "comparison": "use-multilingual - none"},
            {**base, "comparison": "use-multilingual - hashed", "value_without": 0.1,
             "diff": 0.02, "ci_low": -0.01, "ci_high": 0.05}]
    check = {"encoder": "use-multilingual", "model": "maml", "k": 1, "auc_seen": 0.81,
             "auc_unseen": 0.74, "items_seen": 102, "items_unseen": 101, "tasks": 972}
    (tmp_path / "multilingual.json").write_text(json.dumps({"datasets": {"multilingual": {
        "params": "p.yaml", "dataset": "synthetic", "seeds": [0], "algorithms": ["maml"],
        "item_id_dropout": 0.5, "text_dim": 32, "catalogue_metric": "ndcg@20",
        "item_cold_catalogue": "new", "confidence": 0.95, "none_identical_across_runs": True,
        "rows": rows, "cross_lingual": [check], "seconds": {"total": 600.0}}},
        "goals": {"maml: beats hashed at every K": False}}))
    text = mod.multilingual_table(tmp_path)
    assert "| maml | item_cold | none → use-multilingual | 0.050 → 0.120, " \
           "**+0.070 [+0.050, +0.090]** |" in text
    assert "| maml | item_cold | hashed → use-multilingual | 0.100 → 0.120, " \
           "+0.020 [-0.010, +0.050] |" in text
    assert "| use-multilingual | maml | 0.810 / 0.740 |" in text
    assert "maml: beats hashed at every K: **missed**" in text


def _scale_run(minutes: float, peak_mib: float, completed: bool = True) -> dict:
    stages = [{"stage": s, "seconds": minutes * 60 / 2, "cpu_seconds": 60.0,
               "peak_rss_mib": peak_mib, "returncode": 0} for s in ("train", "evaluate")]
    return {"params": "scale_100k", "overlay": {"ingest": {"synthetic": {
        "interactions": 2_000_000, "items": 100_000, "users": 30_000}}}, "seeds": [0],
        "commit": "0123456789abcdef", "goal": {"minutes_1_seed": 60, "peak_gib": 16},
        "stages": stages, "total_minutes": minutes, "peak_rss_gib": peak_mib / 1024,
        "completed": completed,
        "train": {"objective": {"loss": "sampled", "item_ids": 100_001,
                                "sampled_above": 5000},
                  "fits": {"maml": {"fit_seconds": 61.0, "stopped_by": "time budget",
                                    "steps": 300},
                           "pretrain": {"fit_seconds": "probe"}}}}


def test_the_scale_table_judges_time_and_memory_and_never_calls_a_partial_run_met(
        tmp_path: Path) -> None:
    """Each scale run: its stages, the loss the size rule chose, the slowest fits, and the
    goal judged on both minutes and peak memory; a run that stopped is not met."""
    scale_table = _table_module().scale_table
    path = tmp_path / "scale_100k.json"
    path.write_text(json.dumps(_scale_run(50.0, 8 * 1024)))
    text = scale_table(tmp_path)
    assert "50.0 min" in text and "goal 60 min, 16 GiB: met" in text
    assert "loss sampled" in text and "maml 61 s (time budget, 300 steps)" in text
    assert "| train | 25.0 |" in text and "pretrain" not in text   # a probe's fit has no time
    path.write_text(json.dumps(_scale_run(50.0, 20 * 1024)))
    assert "**missed**" in scale_table(tmp_path)                 # memory over the goal
    path.write_text(json.dumps(_scale_run(70.0, 8 * 1024)))
    assert "**missed**" in scale_table(tmp_path)                 # time over the goal
    run = _scale_run(10.0, 8 * 1024, completed=False)
    run["stages"][0].update(returncode=2, error_tail="INFO a\nerror: maml diverged\n")
    path.write_text(json.dumps(run))
    text = scale_table(tmp_path)
    assert "not completed" in text and ": met" not in text
    assert "train stopped (exit 2): error: maml diverged" in text
