"""The Oracle: a TFT forecasts the cumulative log-return of the coming bars as quantiles, read as
P(up) and an uncertainty for the ensemble.

- :mod:`.task`: the target, the pinball loss, P(up), the task class;
- :mod:`.baselines`: the naive forecasts to beat and the training split's statistics;
- :mod:`.evaluation` and :mod:`.plots`: a split scored beside those baselines, and its pictures;
- :mod:`.experiment`: run, format, per-bar signals, load.

``from quantum_alpha_jax.tasks import oracle`` gives all of their public names; importing the
package registers the model ``'oracle'`` (:mod:`quantum_alpha_jax.tasks.registry`).
"""

from quantum_alpha_jax.tasks.oracle.baselines import NAIVE_BASELINES
from quantum_alpha_jax.tasks.oracle.baselines import naive_forecasts
from quantum_alpha_jax.tasks.oracle.baselines import training_baselines
from quantum_alpha_jax.tasks.oracle.evaluation import evaluate
from quantum_alpha_jax.tasks.oracle.evaluation import evaluate_population
from quantum_alpha_jax.tasks.oracle.evaluation import POPULATION_METRICS
from quantum_alpha_jax.tasks.oracle.experiment import bar_signals
from quantum_alpha_jax.tasks.oracle.experiment import evaluate_saved
from quantum_alpha_jax.tasks.oracle.experiment import format_results
from quantum_alpha_jax.tasks.oracle.experiment import load
from quantum_alpha_jax.tasks.oracle.experiment import load_run
from quantum_alpha_jax.tasks.oracle.experiment import register_forecaster
from quantum_alpha_jax.tasks.oracle.experiment import run
from quantum_alpha_jax.tasks.oracle.experiment import saved_signals
from quantum_alpha_jax.tasks.oracle.experiment import SIGNAL_COLUMNS
from quantum_alpha_jax.tasks.oracle.task import check_architecture
from quantum_alpha_jax.tasks.oracle.task import check_quantiles
from quantum_alpha_jax.tasks.oracle.task import cumulative_targets
from quantum_alpha_jax.tasks.oracle.task import example_batch
from quantum_alpha_jax.tasks.oracle.task import loss_metrics
from quantum_alpha_jax.tasks.oracle.task import MODEL_INPUTS
from quantum_alpha_jax.tasks.oracle.task import OracleTask
from quantum_alpha_jax.tasks.oracle.task import pinball
from quantum_alpha_jax.tasks.oracle.task import predict_batch
from quantum_alpha_jax.tasks.oracle.task import probability_up
from quantum_alpha_jax.tasks.oracle.task import window_model_sizes
from quantum_alpha_jax.tasks.oracle.task import window_spec

make_task = OracleTask.from_config
ENTRY = register_forecaster(OracleTask, 'Oracle')
