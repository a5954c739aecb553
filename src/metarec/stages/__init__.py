"""Pipeline stages: one module per stage, each a ``run`` function the CLI, dvc.yaml and the
flows call (wiring only)."""
