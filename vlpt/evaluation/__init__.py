"""Evaluation: zero-shot classification, retrieval, linear probes and captioning over the
datasets of ``config.eval.datasets`` (:mod:`vlpt.evaluation.suite`)."""
