"""The Strategist: a Decision Transformer imitates return-conditioned trading trajectories and
trades free-running, conditioned on a target return (the maths in :mod:`.task`'s doc).

- :mod:`.task`: the task class and its loss; :mod:`.rollout_core` and :mod:`.rollout`: the
  free-running rollout and the per-bar signals;
- :mod:`.imitation`: agreement with the hindsight oracle and with the best causal behaviour;
- :mod:`.baselines`: backtests of the model, buy-and-hold and the heuristics, and the paired
  comparison;
- :mod:`.evaluation` and :mod:`.plots`: a split scored, and its picture;
- :mod:`.experiment`: data, run, format, load.

``from quantum_alpha_jax.tasks import strategist`` gives all of their public names; importing the
package registers the model ``'strategist'`` (:mod:`quantum_alpha_jax.tasks.registry`).
"""

from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.tasks.strategist.baselines import backtest_positions
from quantum_alpha_jax.tasks.strategist.baselines import heuristic_results
from quantum_alpha_jax.tasks.strategist.baselines import STATS
from quantum_alpha_jax.tasks.strategist.baselines import versus_best_policy
from quantum_alpha_jax.tasks.strategist.evaluation import conditioning_curve
from quantum_alpha_jax.tasks.strategist.evaluation import evaluate
from quantum_alpha_jax.tasks.strategist.experiment import evaluate_saved
from quantum_alpha_jax.tasks.strategist.experiment import format_results
from quantum_alpha_jax.tasks.strategist.experiment import load
from quantum_alpha_jax.tasks.strategist.experiment import make_data
from quantum_alpha_jax.tasks.strategist.experiment import QUANTILE_LEVELS
from quantum_alpha_jax.tasks.strategist.experiment import run
from quantum_alpha_jax.tasks.strategist.experiment import saved_signals
from quantum_alpha_jax.tasks.strategist.experiment import target_from_quantiles
from quantum_alpha_jax.tasks.strategist.imitation import behaviour_imitation
from quantum_alpha_jax.tasks.strategist.imitation import best_causal_behaviour
from quantum_alpha_jax.tasks.strategist.imitation import imitation
from quantum_alpha_jax.tasks.strategist.imitation import oracle_labels
from quantum_alpha_jax.tasks.strategist.imitation import TEACHER_FORCED_LABEL
from quantum_alpha_jax.tasks.strategist.imitation import teacher_forced_imitation
from quantum_alpha_jax.tasks.strategist.plots import plot_conditioning_curve
from quantum_alpha_jax.tasks.strategist.rollout import bar_signals
from quantum_alpha_jax.tasks.strategist.rollout import Rollout
from quantum_alpha_jax.tasks.strategist.rollout import rollout
from quantum_alpha_jax.tasks.strategist.task import example_batch
from quantum_alpha_jax.tasks.strategist.task import loss_metrics
from quantum_alpha_jax.tasks.strategist.task import SIGNAL_COLUMNS
from quantum_alpha_jax.tasks.strategist.task import StrategistTask
from quantum_alpha_jax.tasks.strategist.task import TRADED_COLUMNS

_STATS = STATS  # the backtest statistics reported per symbol (the name tests read)
make_task = StrategistTask.from_config


ENTRY = registry.register(
    'strategist', title='Strategist', make_task=make_task, window_spec=None,
    metrics=loss_metrics, run=run, load=load, bar_signals=saved_signals,
    signal_columns=TRADED_COLUMNS, evaluate=evaluate_saved, format_results=format_results,
    export_fns={'strategist': 'quantum_alpha_jax.ship.export.inference:strategist',
                'strategist_step': 'quantum_alpha_jax.ship.export.inference:strategist_step'})
