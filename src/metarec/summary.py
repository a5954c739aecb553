"""What `make run` prints at the end: the figures of the last pipeline run, read from files."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from metarec.io import read_json


def _data_table(data: dict) -> Table:
    table = Table(title=f"Data: {data.get('dataset', '?')}")
    for col in ("interactions", "users", "items", "quarantined"):
        table.add_column(col, justify="right")
    table.add_row(*(f"{data.get(c, 0):,}" for c in ("interactions", "users", "items",
                                                     "quarantined")))
    return table


def _tasks_table(data: dict) -> Table:
    tasks = data.get("tasks", {})
    ks = sorted({int(k) for split in tasks.values() for scen in split.values() for k in scen})
    table = Table(title="Tasks per split, scenario and K")
    table.add_column("split")
    table.add_column("scenario")
    for k in ks:
        table.add_column(f"K={k}", justify="right")
    for split, scenarios in tasks.items():
        for scen, per_k in scenarios.items():
            table.add_row(split, scen, *(str(per_k.get(str(k), "")) for k in ks))
    return table


def print_summary(metrics: Path, console: Console | None = None) -> None:
    console = console or Console()
    data_path = metrics / "data.json"
    if data_path.exists():
        data = read_json(data_path)
        console.print(_data_table(data))
        console.print(_tasks_table(data))
    else:
        console.print(f"{data_path} not found: run `dvc repro` first")
