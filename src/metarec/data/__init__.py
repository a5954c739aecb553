"""The data layer: sources, validation rules and their Great Expectations twins, the log checked
in batches, encoding, episode protocols, task batches and draws, landing files."""
