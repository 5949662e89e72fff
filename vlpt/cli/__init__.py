"""Console entry points: ``vlpt-train``, ``vlpt-eval``."""
