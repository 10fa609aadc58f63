"""For migration authors: the edit helpers, the scaffold, and the rehearsal (``verify``) on a
sandbox copy. Builds on ``_run`` and everything below it."""
