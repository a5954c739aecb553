"""Meta-learning core: batched inner loops (torch.func), algorithms, predictors, checkpoints."""
