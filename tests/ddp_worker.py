"""One DDP process of tests/test_ddp.py: runs the real train stage, reports what it did.

Usage: ``python tests/ddp_worker.py SPEC.json`` with the process-group environment
(MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK, LOCAL_RANK, NODE_RANK) set by the test, so that
Lightning sees processes created externally and spawns none. SPEC names a pickled
:class:`~metarec.data.tasks.EpisodeData`, the ``model`` and ``train`` params sections (parsed
like params.yaml), the output folder and where to write this rank's report: the stage's
metrics, a digest of each algorithm's final weights and the files this rank wrote.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path
from typing import Any

import torch


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main(spec_path: str) -> None:
    from metarec import fitting
    from metarec.params import parse
    from metarec.stages import train as stage
    from metarec.train import entries
    from metarec.train.distributed import global_rank

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    data = pickle.loads(Path(spec["data"]).read_bytes())
    params = parse({"model": spec["model"], "train": spec["train"]})
    digests: dict[str, str] = {}
    written: list[str] = []
    fit, save, write = entries.fit_meta, fitting.save_model, stage.write_json

    def fit_and_digest(cls: Any, *args: Any, **kwargs: Any) -> Any:
        result = fit(cls, *args, **kwargs)
        digests[cls.name] = _digest(result.learner.state_dict())
        return result

    def save_and_record(path: Any, *args: Any, **kwargs: Any) -> Any:
        written.append(Path(path).name)
        return save(path, *args, **kwargs)

    def write_and_record(obj: Any, path: Any) -> Any:
        written.append(Path(path).name)
        return write(obj, path)

    fitting.load_episodes = lambda directory: data
    entries.fit_meta = fit_and_digest
    fitting.save_model = save_and_record
    stage.write_json = write_and_record
    out = Path(spec["out"])
    metrics = stage.run(params.model, params.train, out / "episodes", out / "models",
                        out / "metrics" / "train.json")
    rank = global_rank(params.train)
    report = {"rank": rank, "world_size": torch.distributed.get_world_size(),
              "backend": torch.distributed.get_backend(), "metrics": metrics,
              "digests": digests, "written": written}
    Path(spec["report"].format(rank=rank)).write_text(json.dumps(report), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1])
