"""Backups: the tree walk and its scope, copying (sparse, hashed), SQLite, the manifest, the
store, the restore, and the comparison that says two trees are identical. Builds on ``_core``."""
