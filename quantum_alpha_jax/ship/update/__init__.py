"""Continual retraining: ingest new klines, fine-tune on a sliding window, promote only what beats
the promoted model on data neither has seen; and a walk-forward replay of that policy over history.

One file per step of the cycle (:func:`run_cycle`, in :mod:`.cycle`), each with its own doc:

1. :mod:`.intake`: new kline files into the feature store, recorded in the ingest ledger.
2. :mod:`.periods`: the train, validation and holdout ranges ending at the newest common bar.
3. :mod:`.retrain`: fine-tune the promoted version (or train from scratch) on the training window.
4. :mod:`.judge`: candidate and promoted version on the holdout, beside naive baselines.
5. :mod:`.decision`: promote or keep by ``config.metric`` and ``config.margin``, recorded first.

Around them: :mod:`.workspace` (paths, compilation cache, the cycle lock), :mod:`.adapters`
(models by name: the one place that maps ``config.model`` to its code), :mod:`.walkforward` (the
replay: continual vs frozen, period by period) and :mod:`.report` (the decision in a few lines, the
history of every cycle, the walk-forward table and pictures).

Every step keeps its state in the stores (:mod:`quantum_alpha_jax.ship.store`), so a cycle is safe
to kill at any moment and a re-run picks up where it stopped. The names below are the package's
public face: ``from quantum_alpha_jax.ship import update`` then ``update.run_cycle(config,
workdir)``.
"""

from quantum_alpha_jax.ship.update.adapters import ModelAdapter
from quantum_alpha_jax.ship.update.adapters import WarmStart
from quantum_alpha_jax.ship.update.adapters import model_adapter
from quantum_alpha_jax.ship.update.cycle import check_update_config
from quantum_alpha_jax.ship.update.cycle import cycle_name
from quantum_alpha_jax.ship.update.cycle import cycle_pending
from quantum_alpha_jax.ship.update.cycle import run
from quantum_alpha_jax.ship.update.cycle import run_cycle
from quantum_alpha_jax.ship.update.cycle import watch
from quantum_alpha_jax.ship.update.decision import decide
from quantum_alpha_jax.ship.update.decision import finish_promotion
from quantum_alpha_jax.ship.update.intake import KlineFile
from quantum_alpha_jax.ship.update.intake import data_end
from quantum_alpha_jax.ship.update.intake import feed_synthetic
from quantum_alpha_jax.ship.update.intake import ingest
from quantum_alpha_jax.ship.update.intake import new_files
from quantum_alpha_jax.ship.update.intake import read_ledger
from quantum_alpha_jax.ship.update.intake import scan_klines
from quantum_alpha_jax.ship.update.judge import evaluate_params
from quantum_alpha_jax.ship.update.judge import forecast_baselines
from quantum_alpha_jax.ship.update.judge import version_data
from quantum_alpha_jax.ship.update.periods import HOLDOUT
from quantum_alpha_jax.ship.update.periods import MODES
from quantum_alpha_jax.ship.update.periods import simulation_boundaries
from quantum_alpha_jax.ship.update.periods import task_config_for
from quantum_alpha_jax.ship.update.periods import trailing_splits
from quantum_alpha_jax.ship.update.report import continual_vs_frozen
from quantum_alpha_jax.ship.update.report import continual_vs_frozen_sentence
from quantum_alpha_jax.ship.update.report import format_decision
from quantum_alpha_jax.ship.update.report import format_simulation
from quantum_alpha_jax.ship.update.report import plot_comparison
from quantum_alpha_jax.ship.update.report import write_history
from quantum_alpha_jax.ship.update.retrain import Trained
from quantum_alpha_jax.ship.update.retrain import train_model
from quantum_alpha_jax.ship.update.walkforward import simulate
from quantum_alpha_jax.ship.update.workspace import Paths
from quantum_alpha_jax.ship.update.workspace import compilation_cache
from quantum_alpha_jax.ship.update.workspace import resolve_paths

__all__ = [
    'HOLDOUT', 'MODES', 'KlineFile', 'ModelAdapter', 'Paths', 'Trained', 'WarmStart',
    'check_update_config', 'compilation_cache', 'continual_vs_frozen',
    'continual_vs_frozen_sentence', 'cycle_name', 'cycle_pending', 'data_end', 'decide',
    'evaluate_params', 'feed_synthetic', 'finish_promotion', 'forecast_baselines',
    'format_decision', 'format_simulation', 'ingest', 'model_adapter', 'new_files',
    'plot_comparison', 'read_ledger', 'resolve_paths', 'run', 'run_cycle', 'scan_klines',
    'simulate', 'simulation_boundaries', 'task_config_for', 'train_model', 'trailing_splits',
    'version_data', 'watch', 'write_history',
]
