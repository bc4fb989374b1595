"""Evaluation of unlearning: the judge classifiers, the metrics, the evaluation sampler and the statistics."""
