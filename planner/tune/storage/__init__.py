"""The storage: opening Optuna storages, the journal and its lock, study creation, workers' lifecycle and signals
(nothing finished is lost), process identity, and the checks made before any work."""
