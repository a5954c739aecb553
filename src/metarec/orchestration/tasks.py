"""Prefect tasks of the nightly flow: plan shards, score one shard, merge, publish artifacts.

They live in this package (not in ``flows/``) so that Dask workers can unpickle them by
reference. Every task passes paths and small plain values, never DataFrames, and opts out of
Prefect's input caching (``NO_CACHE``): DVC and the batch manifest decide what is reused.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
from prefect import task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger

from metarec.config import ScoreParams, TableSource, ValidateParams
from metarec.io import plain, read_json
from metarec.orchestration import sharding
from metarec.orchestration.sharding import BatchInputs
from metarec.scoring.inputs import NightRejected


@task(name="plan-shards", cache_policy=NO_CACHE)
def plan_shards(params: ScoreParams, validated_dir: str, models_dir: str, out_root: str,
                as_of: str, shards: int, selection: str | None, validate: ValidateParams,
                landing_format: TableSource
                ) -> tuple[BatchInputs, dict[str, Any], list[tuple[int, int]], str]:
    """Inputs checked (the landing files validated), the day's counts, chunk ranges per
    shard and a folder for their files. A night whose rows were all quarantined fails here,
    with an artifact of its validation summary."""
    folder = sharding.shard_dir(as_of, out_root)
    try:
        inputs = sharding.prepare(params, validated_dir, models_dir, as_of, selection,
                                  validate, landing_format, folder)
    except NightRejected as exc:
        shutil.rmtree(folder, ignore_errors=True)
        create_markdown_artifact(key="rejected-landing-day", markdown=landing_markdown(
            as_of, exc.verdict, str(exc)), description=f"nightly {as_of}: every row quarantined")
        raise
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    verdict = inputs.landing_verdict()
    if verdict is not None:
        create_markdown_artifact(key="landing-validation", markdown=landing_markdown(
            as_of, verdict), description=f"nightly {as_of}: landing rows in = kept + "
                                         "quarantined")
    stats = sharding.day_stats(inputs)
    ranges = sharding.split_chunks(sharding.chunks_of(stats, inputs.params), shards)
    get_run_logger().info("%s: %d users in %d chunks -> %d shards (model %s)",
                          inputs.params.as_of, stats["users"],
                          sharding.chunks_of(stats, inputs.params), len(ranges), inputs.model)
    return inputs, stats, ranges, str(folder)


@task(name="score-shard", task_run_name="chunks-{lo}-{hi}", cache_policy=NO_CACHE)
def score_shard(inputs: BatchInputs, lo: int, hi: int, folder: str) -> str:
    """Adapt to and rank the users of chunks lo..hi-1; returns the shard's Parquet path."""
    return sharding.write_shard(inputs, lo, hi, folder)


@task(name="merge-shards", cache_policy=NO_CACHE)
def merge_shards(inputs: BatchInputs, stats: dict[str, Any], shard_paths: list[str],
                 folder: str, out_root: str) -> str:
    """Publish the batch folder (atomic rename), byte-identical to ``metarec score``'s."""
    return str(sharding.merge(inputs, stats, shard_paths, folder, out_root))


# --------------------------------------------------------------------------------------------
# artifacts (keys: lowercase letters, digits, dashes; cells: plain Python values)


@task(name="publish-validation", cache_policy=NO_CACHE)
def publish_validation(summary_path: str) -> None:
    """Table artifact: one row per expectation of reports/validation/summary.json."""
    summary = read_json(summary_path)
    rows = [{"table": e["table"], "expectation": e["expectation_type"],
             "column": e.get("column"), "success": e["success"],
             "unexpected": e.get("unexpected_count"),
             "quarantined": e.get("rows_quarantined")} for e in summary["expectations"]]
    counts = "; ".join(f"{t}: {c['rows_in']:,} in, {c['rows_kept']:,} kept, "
                       f"{c['rows_quarantined']:,} quarantined"
                       for t, c in summary["tables"].items())
    create_table_artifact(
        table=[{k: plain(v) for k, v in r.items()} for r in rows], key="validation-summary",
        description=f"{summary['dataset']} (policy {summary['policy']}, passed: "
                    f"{summary['passed']}). {counts}. Source: {summary_path}")


@task(name="publish-evaluation", cache_policy=NO_CACHE)
def publish_evaluation(report_path: str, eval_json: str) -> None:
    """The answer first: a table artifact of the headline (per scenario and K: the best
    meta-learner against the best baseline, the users, the CI, the verdict), one Markdown
    artifact per figure, the report as Markdown with its figures inlined, and a link to the
    HTML version on disk.

    A figure is a Markdown image, which the UI draws at the width of its column (about
    850 px at a 1400 px window); an image artifact would also print its whole ``data:`` URI
    as text under it."""
    from metarec.eval.document import APPENDIX, PLOTS, png_data_uri
    from metarec.eval.headline import headline_table

    path = Path(report_path).resolve()
    result = read_json(eval_json)
    rows = headline_table(result.get("headline", []))
    if rows:
        create_table_artifact(table=[{k: plain(v) for k, v in r.items()} for r in rows],
                              key="evaluation-headline",
                              description="test catalogue metric: the best meta-learner on "
                                          "validation minus the best baseline, relative, CI, "
                                          "users, verdict")
    text = path.read_text(encoding="utf-8")
    text = text.replace(f"]({APPENDIX})", f"]({path.with_name(APPENDIX).as_uri()})")
    html = path.with_name("index.html")
    for png in sorted((path.parent / PLOTS).glob("*.png")):
        uri = png_data_uri(png)
        link = f"]({PLOTS}/{png.name})"
        caption = next((line[2:line.index(link)] for line in text.splitlines()
                        if line.startswith("![") and link in line), png.stem)
        text = text.replace(link, f"]({uri})")
        create_markdown_artifact(
            markdown=f"![{caption}]({uri})\n\n{caption}.\n\nFile: `{png}`; the full report: "
                     f"`{html}`\n", key=f"curve-{png.stem.replace('_', '-')}",
            description=f"{png.name}: {caption}")
    create_markdown_artifact(markdown=text, key="evaluation-report",
                             description=f"reports/eval/report.md ({path})")
    create_link_artifact(link=html.as_uri(), link_text=str(html), key="evaluation-report-link",
                         description="the evaluation report with its curves, one HTML file")


def landing_markdown(night: str, verdict: dict[str, Any], failure: str | None = None) -> str:
    """A night's landing validation for people: rows per file, then every rule that set
    rows aside, with its count and first examples."""
    lines = [f"# Landing data of {night}", ""]
    if failure:
        lines += [f"**Failed night:** {failure}", ""]
    lines += [f"Policy **{verdict['policy']}**: {verdict['rows_in']:,} rows in = "
              f"{verdict['rows_kept']:,} kept + {verdict['rows_quarantined']:,} quarantined.",
              "", "| file | night | rows in | kept | quarantined |", "|---|---|---|---|---|"]
    lines += [f"| {f['file']} | {f['night']} | {f['rows_in']:,} | {f['rows_kept']:,} | "
              f"{f['rows_quarantined']:,} |" for f in verdict["files"]]
    bad = [e for e in verdict["expectations"] if e["rows_quarantined"]]
    if bad:
        lines += ["", "| rule | column | rows set aside | first rows |", "|---|---|---|---|"]
        lines += [f"| {e['reason']} | {e['column']} | {e['rows_quarantined']:,} | "
                  + ", ".join(str(x.get("source_row", "")) for x in e["examples"]) + " |"
                  for e in bad]
    return "\n".join(lines) + "\n"


def examples(batch_dir: str | Path, validated_dir: str | Path, users: int = 3,
             top: int = 5) -> str:
    """Markdown: the ``top`` recommendations of the first ``users`` cold-start users, with the
    ranking score, the predicted rating and the support item behind each pick."""
    recs = pq.read_table(Path(batch_dir) / "recommendations.parquet").to_pandas()
    recs = recs[(recs["kind"] == "cold") & (recs["rank"] <= top)]
    chosen = list(dict.fromkeys(recs["user_id"]))[:users]
    items_path = Path(validated_dir) / "items.parquet"
    titles: dict[str, str] = {}
    if "title" in pq.read_schema(items_path).names:
        items = pq.read_table(items_path, columns=["item_id", "title"]).to_pandas()
        titles = dict(zip(items["item_id"].astype(str), items["title"].astype(str),
                          strict=True))
    lines = [f"# Recommendations {Path(batch_dir).name}: top {top} of {len(chosen)} "
             "cold-start users", ""]
    for user in chosen:
        rows: pd.DataFrame = recs[recs["user_id"] == user].sort_values("rank")
        lines += [f"## user {user}", "",
                  "| rank | item | title | score | predicted rating | because |",
                  "|---|---|---|---|---|---|"]
        for r in rows.itertuples():
            rating = "" if pd.isna(r.predicted_rating) else f"{r.predicted_rating:.2f}"
            why = "" if pd.isna(r.because) else titles.get(str(r.because), str(r.because))
            lines.append(f"| {r.rank} | {r.item_id} | {titles.get(str(r.item_id), '')} | "
                         f"{r.score:.3f} | {rating} | {why} |")
        lines.append("")
    if not chosen:
        lines.append("(no cold-start users on this date)")
    return "\n".join(lines)


@task(name="publish-batch", cache_policy=NO_CACHE)
def publish_batch_artifacts(batch_dir: str, validated_dir: str, seconds: float) -> dict[str, Any]:
    """Table artifact with the batch's counts and a Markdown artifact with examples."""
    manifest = read_json(Path(batch_dir) / "manifest.json")
    landing = manifest.get("landing") or {}
    row = {"as_of": manifest["as_of"], "users_scored": manifest["users"],
           "cold_users": manifest["cold_users"], "dynamic_users": manifest["dynamic_users"],
           "rows": manifest["rows"], "catalogue_items": manifest["catalogue_items"],
           "model": manifest["model_name"], "seed": manifest.get("seed"),
           "landing_rows_in": landing.get("rows_in", 0),
           "landing_rows_kept": landing.get("rows_kept", 0),
           "landing_rows_quarantined": landing.get("rows_quarantined", 0),
           "seconds": round(seconds, 2), "batch": str(Path(batch_dir).resolve())}
    row = {k: plain(v) for k, v in row.items()}
    create_table_artifact(table=[row], key="nightly-batch",
                          description=f"nightly batch {manifest['as_of']}: parquet sha256 "
                                      f"{manifest['parquet_sha256']}")
    create_markdown_artifact(markdown=examples(batch_dir, validated_dir),
                             key="nightly-examples",
                             description=f"top-5 of 3 cold-start users, {manifest['as_of']}")
    return row

