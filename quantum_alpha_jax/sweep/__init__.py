"""Hyperparameter sweeps: Optuna studies over any model's config on a real database (SQLite in the
workdir, or one PostgreSQL study shared by many workers), with pruning, exact resume after a kill,
the best trial's test score beside its validation score, and the Deflated Sharpe Ratio."""
