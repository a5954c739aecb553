"""``metarec show-user``: one user's history up to a date and what that night's batch
recommended them, with titles, scores and the support item behind each pick."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from metarec.errors import DataError
from metarec.io import read_parquet
from metarec.scoring.publish import RECS
from metarec.scoring.world import day_end, parse_as_of


def _titles(validated: Path) -> dict[str, str]:
    path = validated / "items.parquet"
    if "title" not in pq.read_schema(path).names:
        return {}
    items = pq.read_table(path, columns=["item_id", "title"]).to_pandas()
    return dict(zip(items["item_id"].astype(str), items["title"].astype(str), strict=True))


def show_user(user: str, as_of: str, validated: Path, batches: Path, history: int = 10
              ) -> list[str]:
    """Lines: the user's latest ``history`` interactions before the end of ``as_of`` and
    their recommendations in ``batches/<as_of>``."""
    end = day_end(parse_as_of(as_of))
    log = read_parquet(validated / "interactions.parquet")
    mine = log[(log["user_id"] == user) & (log["timestamp"] < end)].sort_values("timestamp")
    titles = _titles(validated)
    name = lambda item: f"{item} {titles.get(str(item), '')}".strip()  # noqa: E731
    lines = [f"user {user}: {len(mine)} interactions up to {as_of}"]
    for r in mine.tail(history).itertuples():
        day = dt.datetime.fromtimestamp(int(r.timestamp), dt.UTC).date().isoformat()
        lines.append(f"  {day}  {r.rating:g}  {name(r.item_id)}")
    batch = batches / as_of / RECS
    if not batch.is_file():
        raise DataError(f"no batch for {as_of}; run `metarec score --as-of {as_of}`",
                        file=str(batch))
    recs = pd.read_parquet(batch)
    recs = recs[recs["user_id"] == user].sort_values("rank")
    if recs.empty:
        lines.append(f"not scored on {as_of} (not a cold-start or re-adapted user that day)")
        return lines
    lines.append(f"recommended on {as_of} ({recs['kind'].iloc[0]} user):")
    for r in recs.itertuples():
        rating = "" if pd.isna(r.predicted_rating) else f" rating {r.predicted_rating:.2f}"
        why = "" if pd.isna(r.because) else f"  <- because of {name(r.because)}"
        lines.append(f"  {r.rank:2d}. {name(r.item_id)}  (score {r.score:.3f}{rating}){why}")
    return lines
