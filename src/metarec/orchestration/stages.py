"""A Prefect task that runs one DVC stage, and the retry policy that goes with it.

Each task runs ``dvc repro -s <stage>`` in a subprocess (not the stage function): DVC then
decides whether the stage is up to date, records what ran in ``dvc.lock`` and keeps outputs in
its cache, so a flow run and a ``dvc repro`` by hand never disagree about the pipeline state.

Retries are for transient failures only: an OSError other than a full disk (spawning,
network), a DVC lock held by another ``dvc`` process, a stage killed by a signal. A stage whose
``metarec`` command exits with code 2 failed in a way no retry cures (bad params or data, a
full disk, a bug: the CLI classifies every exception once, :func:`metarec.errors.permanent`),
so the task fails at once; a task that raises in this process is classified by the same rule.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path

from prefect import Task, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.logging import get_run_logger
from prefect.states import State
from prefect.tasks import exponential_backoff

from metarec.config import PrefectParams
from metarec.errors import is_permanent
from metarec.progress import RECORDS_ENV, parse_record

# dvc's own wording when a stage command fails: "failed to run: <cmd>, exited with <code>"
_EXITED = re.compile(r"exited with (-?\d+)")
METAREC_ERROR_EXIT = 2  # cli._fail: no retry can cure it (params, data, disk full, a bug)
_TAIL = 4000
_TAIL_LINES = 200


class StageFailed(RuntimeError):
    """``dvc repro -s <stage>`` exited non-zero; ``permanent`` when no retry can help."""

    def __init__(self, stage: str, returncode: int, output: str) -> None:
        found = _EXITED.findall(output)
        self.stage, self.returncode = stage, returncode
        self.stage_exit = int(found[-1]) if found else None
        self.permanent = self.stage_exit == METAREC_ERROR_EXIT
        kind = ("permanent (exit 2: retrying gives the same)" if self.permanent
                else "possibly transient")
        super().__init__(f"dvc repro -s {stage} exited with {returncode} ({kind}):\n"
                         f"{output[-_TAIL:]}")


def stage_env() -> dict[str, str]:
    """The environment of a stage subprocess: this interpreter's bin first on PATH, so ``dvc``
    and the ``metarec`` commands in dvc.yaml are the ones installed beside it; log records
    one per line (:data:`~metarec.progress.RECORDS_ENV`) and no line wrapped by rich (which
    cuts what it prints to a pipe at 80 columns), so each line read is one whole record."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("GX_ANALYTICS_ENABLED", "false")
    env[RECORDS_ENV] = "1"
    env["COLUMNS"] = "10000"
    return env


# DVC ends every stage that rewrites dvc.lock with a hint to `git add` it and to turn on
# autostaging; inside a flow it is noise after each stage (committing dvc.lock is the
# user's call, and `git status` shows it), so those lines are left out of the run log.
_GIT_HINT = ("To track the changes with git, run:", "To enable auto staging, run:")
_DVC_LEVEL = re.compile(r"^(WARNING|ERROR): ")   # DVC's own warnings and errors


def _log_lines(lines: Iterable[str], stage: str,
               log: logging.Logger | logging.LoggerAdapter | None) -> Iterator[str]:
    """Each line of a stage's output, passed on; those worth a record logged as one, at its
    own level (a metarec record) or INFO (DVC's and other output), DVC's git hints left out."""
    hint = False
    for line in lines:
        yield line
        text = line.rstrip()
        if text in _GIT_HINT:
            hint = True
        elif text and not text[0].isspace():
            hint = False
        if log is None or hint or not text.strip():
            continue
        record = parse_record(text)
        if record is None:
            dvc = _DVC_LEVEL.match(text)
            record = (logging.getLevelNamesMapping()[dvc.group(1)] if dvc else logging.INFO,
                      text)
        log.log(record[0], "%s: %s", stage, record[1])


def dvc_repro(stage: str, project_dir: str | Path,
              log: logging.Logger | logging.LoggerAdapter | None = None) -> str:
    """Run one DVC stage in ``project_dir``, streaming its output lines to ``log`` (the run
    log, live in the UI); return the output's tail, raise :class:`StageFailed`."""
    cmd = [str(Path(sys.executable).parent / "dvc"), "repro", "-s", stage]
    tail: deque[str] = deque(maxlen=_TAIL_LINES)
    with subprocess.Popen(cmd, cwd=project_dir, env=stage_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        tail.extend(_log_lines(proc.stdout, stage, log))
    output = "".join(tail)
    if proc.returncode != 0:
        raise StageFailed(stage, proc.returncode, output)
    return output


def is_transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Prefect ``retry_condition_fn``: retry unless the failure is permanent (a stage that
    exited 2, or an exception :func:`metarec.errors.is_permanent` calls deterministic)."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            state.result(raise_on_failure=True)
        except BaseException as raised:  # only classified here, never swallowed
            exc = raised
    if isinstance(exc, StageFailed):
        return not exc.permanent
    return exc is None or not is_permanent(exc)


@task(name="dvc-stage", task_run_name="{stage}", cache_policy=NO_CACHE,
      retry_condition_fn=is_transient)
def run_stage(stage: str, project_dir: str) -> str:
    """One pipeline stage through DVC; its output goes to the run log line by line."""
    dvc_repro(stage, project_dir, get_run_logger())
    return stage


@task(name="sync-pipeline", cache_policy=NO_CACHE)
def sync_pipeline(project_dir: str) -> list[str]:
    """dvc.yaml's derived dependencies brought up to date with the code and params.yaml
    (your own data files, params per key) before any stage runs, so DVC sees what the
    stages will read; each change is logged."""
    from metarec import pipeline

    changed = pipeline.sync(Path(project_dir) / "dvc.yaml")
    for line in changed:
        get_run_logger().info("dvc.yaml updated: %s", line)
    return changed


def with_retries(t: Task, params: PrefectParams) -> Task:
    """``t`` with the retry count and exponential backoff of params.yaml's prefect section."""
    return t.with_options(retries=params.retries,
                          retry_delay_seconds=exponential_backoff(params.retry_backoff_s))
