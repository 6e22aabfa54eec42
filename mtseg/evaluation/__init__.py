"""Evaluation: the paper's whole-image evaluation (§4), its metrics and operating points, the
intensity-only baseline and the figures' plots (``docs/development.md`` maps every module)."""
