"""What keeps the record true across crashes: the journal, the lock, the private state folder,
``state.json`` and history, the guard over the state folder during a run, recovery, and the
``VERSION`` drift check. Builds on ``_backup`` and ``_core``."""
