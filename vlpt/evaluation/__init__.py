"""Evaluation: metric definitions (CLIP_benchmark's) and the evaluators that run them sharded."""
