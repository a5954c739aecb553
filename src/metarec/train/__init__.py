"""Lightning wiring of the meta-learners: data module, training module, fitting helpers."""
