"""Shipping trained models: export, the versioned model store and continual retraining.

- :mod:`.export`: each model's deployable inference function (found in the task registry), ONNX
  (jax2onnx) and TF SavedModel (jax2tf) files with their metadata, parity-checked against JAX,
  and the manifest the decision service (``serve/``) loads.
- :mod:`.store`: :class:`~.store.ModelStore`, immutable numbered versions of each model with their
  provenance (config, data fingerprint, normaliser, code revision, metrics), a promoted pointer
  with its history, and the update cycles' decision records; saves are atomic.
- :mod:`.update`: the continual-retraining cycle (ingest new klines, retrain on a sliding window,
  judge candidate and promoted version on the newest days, promote or keep) and its walk-forward
  replay over history, one file per step.

Nothing is imported here, so that ``from quantum_alpha_jax.ship import store`` stays cheap.
"""
