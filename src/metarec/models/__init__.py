"""The network (a plain ``nn.Module``), the predictor contracts, and what the statistical
baselines share."""
