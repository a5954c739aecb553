"""Evaluation: accuracy and ranking metrics over padded task tensors, paired bootstrap."""
