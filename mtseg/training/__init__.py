"""Training: the Lightning module, the training modes (how a mini-batch is drawn, gathered and scored),
resume, callbacks, the run's summary and its folder (``docs/development.md`` maps every module)."""
