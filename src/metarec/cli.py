"""The `metarec` command line: one subcommand per pipeline stage, wiring only.

Each subcommand reads params.yaml once, passes its own section to the stage's ``run`` function
and turns every failure that a retry cannot cure (a :class:`MetarecError`, a full disk, a bug:
:func:`metarec.errors.permanent`) into a one-line message and exit code 2, which the flows
never retry. The commands that write data, models or batches hold the project lock
(``.metarec.lock`` beside params.yaml) while they run. dvc.yaml and the Prefect flows call the
same subcommands / functions.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from metarec.config import Params
from metarec.errors import ParamsError, WorkerLost, permanent
from metarec.io import crash_stage, lock_file, project_lock
from metarec.params import load_params

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Meta-learned recommendations for cold-start users.")
console = Console(stderr=True)

PARAMS = typer.Option(Path("params.yaml"), "--params", help="params file to read")


@app.callback()
def _setup(verbose: bool = typer.Option(False, "--verbose", "-v", help="debug logging")) -> None:
    """Progress goes to stderr: through rich on a terminal, as plain one-line records
    elsewhere (a pipe, CI, a Prefect task), where rich would wrap at 80 columns and add a
    second timestamp; results go to files and stdout."""
    from metarec.progress import plain_handler

    if console.is_terminal:
        from rich.logging import RichHandler

        handler: logging.Handler = RichHandler(console=console, show_path=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = plain_handler()
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        handlers=[handler], force=True)
    logging.captureWarnings(True)    # a Python warning is one record, not two stray lines
    for noisy in ("great_expectations", "lightning", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: Exception, code: int = 2) -> None:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


@contextlib.contextmanager
def reported(stage: str | None = None, params: Path | None = None,
             lock: str | None = None) -> Iterator[Params | None]:
    """A failure no retry can cure becomes one red line and exit code 2 (a bug's traceback
    is logged at debug level: ``--verbose``); anything else (an interrupt, a network error)
    propagates. A pipeline ``stage`` first checks that dvc.yaml (beside ``params``) tracks
    what it will read. With ``lock`` (the command's name) params are loaded and yielded, and
    the project lock beside ``params`` is held until the command ends (waiting
    ``prefect.lock_wait_s``); under torchrun only global rank 0 takes it."""
    import os

    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(crash_stage(stage or lock or "cli"))
            if stage is not None and params is not None:
                from metarec import pipeline

                pipeline.check_stage(stage, params)
            loaded = None
            if lock is not None and params is not None:
                loaded = load_params(params)
                if os.environ.get("RANK", "0") == "0":
                    stack.enter_context(project_lock(
                        lock_file(params.absolute().parent), f"metarec {lock}",
                        loaded.prefect.lock_wait_s))
            yield loaded
        except (typer.Exit, KeyboardInterrupt):
            raise
        except Exception as exc:
            found = permanent(exc)
            if isinstance(exc, WorkerLost):     # a retry may pass: one line, exit code 1
                _fail(exc, code=1)
            if found is None:
                raise
            if found is not exc:
                logging.getLogger("metarec").debug("traceback", exc_info=exc)
            _fail(found)


def _from_dvc(stage: str, **given: Path | None) -> dict[str, Path]:
    """Each path option not given on the command line, read from ``stage``'s command in
    ./dvc.yaml: the one place the pipeline's paths are written (``inp`` is ``--in``)."""
    from metarec import pipeline

    here = Path("dvc.yaml")
    opts = pipeline.stage_options(Path("."), stage) if here.is_file() else {}
    out = {}
    for name, value in given.items():
        flag = "in" if name == "inp" else name
        if value is None:
            if flag not in opts:
                raise ParamsError(f"metarec {stage}: give --{flag} (no dvc.yaml here names it)")
            value = Path(opts[flag])
        out[name] = value
    return out


def _dvc(help_text: str, flag: str | None = None) -> Any:
    """A path option whose default is the dvc.yaml stage's own (see :func:`_from_dvc`)."""
    names = (flag,) if flag else ()
    return typer.Option(None, *names, help=f"{help_text} (default: from dvc.yaml)")


@app.command()
def ingest(
    out: Path | None = _dvc("folder for the canonical tables"),
    params: Path = PARAMS,
) -> None:
    """Fetch or read the data source named in params.yaml; write canonical Parquet tables."""
    from metarec.stages import ingest as stage

    with reported("ingest", params, lock="ingest") as p:
        paths = _from_dvc("ingest", out=out)
        stage.run(p.ingest, paths["out"])


@app.command()
def validate(
    inp: Path | None = _dvc("canonical tables", "--in"),
    out: Path | None = _dvc("folder for the validated tables"),
    quarantine: Path | None = _dvc("folder for rejected rows"),
    report: Path | None = _dvc("summary JSON + Markdown"),
    params: Path = PARAMS,
) -> None:
    """Check the canonical tables with Great Expectations; quarantine or fail on bad rows."""
    from metarec.stages import validate as stage

    with reported("validate", params, lock="validate") as loaded:
        p = _from_dvc("validate", inp=inp, out=out, quarantine=quarantine, report=report)
        stage.run(loaded.validate, *p.values())


@app.command()
def episodes(
    inp: Path | None = _dvc("validated tables", "--in"),
    out: Path | None = _dvc("folder for tasks and vocabularies"),
    metrics: Path | None = _dvc("data metrics (DVC)"),
    report: Path | None = _dvc("validation summary (for the quarantine count)"),
    params: Path = PARAMS,
) -> None:
    """Split users in time and build one support/query task per user and K."""
    from metarec.stages import episodes as stage

    with reported("episodes", params, lock="episodes") as p:
        paths = _from_dvc("episodes", inp=inp, out=out, metrics=metrics, report=report)
        stage.run(p.episodes, *paths.values())


# -- later stages register below this line (train, evaluate, score, ...) --


@app.command()
def serve(
    project: Path = typer.Option(Path("."), help="project folder (params.yaml, flows/)"),
) -> None:
    """Serve the nightly and retraining deployments on their cron schedules (until Ctrl-C)."""
    from metarec.orchestration.local import serve_project

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per schedule poll
    with reported():
        serve_project(project)


@app.command()
def ui(
    stop: bool = typer.Option(False, "--stop", help="stop the server this project started"),
    params: Path = PARAMS,
) -> None:
    """Start (or find) the local Prefect server of params.yaml's prefect section; Ctrl-C stops."""
    from metarec.orchestration import server

    with reported():
        loaded = load_params(params).prefect
        if stop:
            typer.echo("stopped" if server.stop(loaded, params.parent) else "none running")
        else:
            server.serve_forever(loaded, params.parent)


@app.command("ui-check")
def ui_check(
    out: Path = typer.Option(Path("reports/ui"), help="folder for the screenshots"),
    report: Path = typer.Option(Path("reports/eval/index.html"), help="the HTML report"),
    api: str | None = typer.Option(None, help="Prefect API URL (default: PREFECT_API_URL, "
                                              "else the project's server in params.yaml)"),
    params: Path = PARAMS,
) -> None:
    """Render the latest training run, its artifacts and the HTML report in headless
    Chromium at 1400 px and check what is on screen: the headline table, each plot at least
    800 x 400 px with no data URI printed as text, a run log without continued records or
    DVC noise, the verdicts with their user counts on the report's first screen."""
    import os

    from metarec.orchestration.uicheck import check_report, check_ui

    with reported():
        p = load_params(params).prefect
        found = check_ui(api or os.environ.get("PREFECT_API_URL")
                         or f"http://{p.host}:{p.port}/api", out)
        shots = [*found["screenshots"], check_report(report, out)["screenshot"]]
    for shot in shots:
        typer.echo(shot)


@app.command()
def train(
    episodes: Path | None = _dvc("episodes folder"),
    out: Path | None = _dvc("folder for checkpoints and training logs"),
    metrics: Path | None = _dvc("training metrics (DVC)"),
    params: Path = PARAMS,
) -> None:
    """Meta-train every algorithm in params.yaml (+ pretrain/finetune); write checkpoints."""
    from metarec.stages import train as stage

    with reported("train", params, lock="train") as loaded:
        p = _from_dvc("train", episodes=episodes, out=out, metrics=metrics)
        stage.run(loaded.model, loaded.train, p["episodes"], p["out"], p["metrics"])


@app.command()
def evaluate(
    episodes: Path | None = _dvc("episodes folder"),
    models: Path | None = _dvc("trained models (seed<S>/ folders)"),
    metrics: Path | None = _dvc("evaluation metrics (DVC)"),
    report: Path | None = _dvc("Markdown report and PNG curves"),
    selection: Path | None = _dvc("what the nightly batch serves (DVC)"),
    params: Path = PARAMS,
) -> None:
    """Score every model on the test tasks: 4 scenarios x K x seeds, with bootstrap CIs."""
    from metarec.stages import evaluate as stage

    with reported("evaluate", params, lock="evaluate") as loaded:
        p = _from_dvc("evaluate", episodes=episodes, models=models, metrics=metrics,
                      report=report, selection=selection)
        stage.run(loaded.evaluate, p["episodes"], p["models"], p["metrics"], p["report"],
                  p["selection"])


# options shared by the scoring commands (score, backfill): dvc.yaml's score stage
VALIDATED = _dvc("validated tables", "--in")
MODELS = _dvc("trained models (seed<S>/<model>.pt)")
BATCHES = _dvc("root of the dated batches", "--out")
SELECTION = _dvc("evaluate's choices: the model, seed and inner steps served")


@app.command()
def score(
    as_of: str | None = typer.Option(None, "--as-of",
                                     help="YYYY-MM-DD (UTC); default params.yaml score.as_of"),
    inp: Path | None = VALIDATED,
    models: Path | None = MODELS,
    out: Path | None = BATCHES,
    selection: Path | None = SELECTION,
    params: Path = PARAMS,
) -> None:
    """Adapt to the day's cold-start users and write their top-K batch (atomically)."""
    from metarec.stages import score as stage

    with reported("score", params, lock="score") as p:
        d = _from_dvc("score", inp=inp, models=models, out=out, selection=selection)
        batch = stage.run(p.score, p.validate, p.ingest, d["inp"], d["models"], d["out"],
                          as_of, d["selection"])
    typer.echo(str(batch))


@app.command()
def backfill(
    first: str = typer.Option(..., "--from", help="first night YYYY-MM-DD (UTC)"),
    last: str = typer.Option(..., "--to", help="last night YYYY-MM-DD (UTC), inclusive"),
    inp: Path | None = VALIDATED,
    models: Path | None = MODELS,
    out: Path | None = BATCHES,
    selection: Path | None = SELECTION,
    params: Path = PARAMS,
) -> None:
    """Write the batch of every night from --from to --to (the bytes `score` gives each)."""
    from metarec.stages import score as stage

    with reported(params=params, lock="backfill") as p:
        d = _from_dvc("score", inp=inp, models=models, out=out, selection=selection)
        batches = stage.backfill(p.score, p.validate, p.ingest, d["inp"], d["models"],
                                 d["out"], first, last, d["selection"])
    for batch in batches:
        typer.echo(str(batch))


@app.command()
def backtest(
    inp: Path | None = VALIDATED,
    episodes: Path | None = _dvc("episodes (training cut-off)"),
    models: Path | None = MODELS,
    selection: Path | None = SELECTION,
    metrics: Path | None = _dvc("summary JSON"),
    report: Path | None = _dvc("plot, table, per-user rows"),
    params: Path = PARAMS,
) -> None:
    """Replay the nights of params' backtest window; judge each batch on the next days."""
    from metarec.backtest.report import markdown
    from metarec.stages import backtest as stage

    with reported("backtest", params, lock="backtest") as p:
        d = _from_dvc("backtest", inp=inp, episodes=episodes, models=models,
                      selection=selection, metrics=metrics, report=report)
        summary = stage.run(p.backtest, p.score, p.validate, p.ingest, p.episodes, p.model,
                            p.train, d["inp"], d["episodes"], d["models"], d["selection"],
                            d["metrics"], d["report"])
    typer.echo(markdown(summary))


@app.command("verify-batch")
def verify_batch(
    batch: Path = typer.Argument(..., help="a batch folder data/recommendations/<DATE>"),
) -> None:
    """Rebuild a batch from its manifest; exit 0 only if the Parquet bytes are identical."""
    from metarec.stages import score as stage

    with reported():
        manifest = stage.verify(batch)
    typer.echo(f"{batch}: identical ({manifest['rows']} rows, sha256 "
               f"{manifest['parquet_sha256']})")


@app.command("show-user")
def show_user(
    user: str = typer.Argument(..., help="a user id"),
    as_of: str = typer.Option(..., "--as-of", help="the batch date YYYY-MM-DD"),
    inp: Path | None = VALIDATED,
    batches: Path | None = BATCHES,
) -> None:
    """Print a user's history and that night's recommendations, with titles and reasons."""
    from metarec.scoring.show import show_user as lines_for

    with reported():
        d = _from_dvc("score", inp=inp, out=batches)
        for line in lines_for(user, as_of, d["inp"], d["out"]):
            typer.echo(line)


@app.command("readme-results")
def readme_results(
    metrics: Path = typer.Option(Path("metrics/eval.json"), help="evaluation metrics"),
    readme: Path = typer.Option(Path("README.md"), help="README to update in place"),
    section: str = typer.Option("results", help="results (from --metrics) | backtest"),
    backtest: Path = typer.Option(Path("metrics/backtest.json"), help="backtest metrics"),
    drift: Path = typer.Option(Path("benchmarks/results/backtest_drift.json"),
                               help="drift benchmark result (skipped when missing)"),
) -> None:
    """Regenerate a results section of the README from metrics files (never typed by hand)."""
    from metarec.errors import ParamsError
    from metarec.io import read_json
    from metarec.readme import BACKTEST, backtest_markdown, results_markdown, update_readme

    with reported():
        if section == "results":
            update_readme(readme, results_markdown(read_json(metrics)))
        elif section == "backtest":
            update_readme(readme, backtest_markdown(
                read_json(backtest), read_json(drift) if drift.exists() else None), BACKTEST)
        else:
            raise ParamsError(f"--section must be results or backtest, not {section!r}")


@app.command()
def dag(
    write: bool = typer.Option(False, "--write", help="rewrite the src/ deps of dvc.yaml"),
    dvc_yaml: Path = typer.Option(Path("dvc.yaml"), "--dvc-yaml", help="pipeline file"),
) -> None:
    """Check (or --write) dvc.yaml's code and params dependencies against the code."""
    from metarec import pipeline

    if write:
        pipeline.write(dvc_yaml)
    problems = pipeline.check(dvc_yaml)
    for line in problems:
        console.print(f"[red]{line}[/]")
    if problems:
        console.print("run `metarec dag --write` to regenerate the code dependencies")
        raise typer.Exit(code=1)
    typer.echo(f"{dvc_yaml}: code and params dependencies match the code")


@app.command()
def summary(
    project: Path = typer.Option(Path("."), help="project folder (metrics/, data/)"),
) -> None:
    """The answer in about 20 lines: data, verdicts with CIs, the nightly model and batch."""
    from metarec.summary import print_summary

    print_summary(project)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())
