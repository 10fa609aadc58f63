"""Running an update: discovery and validation of migration files, planning, the runner (one
migration in a worker thread, its output captured), the orchestration phase, revert, the phase
pipeline, service restarts and the health gate. Builds on ``_safety``, ``_backup`` and ``_core``."""
