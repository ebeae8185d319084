"""The Guardian: a contrastive β-VAE reads the market regime and the coming risk.

- :mod:`.task`: the maths (module doc), the task class, its loss;
- :mod:`.losses`: views, KL, NT-Xent; :mod:`.labels`: rule labels, volatility, risk levels;
- :mod:`.baselines`: the training split's statistics and the past-only rules to beat;
- :mod:`.evaluation` and :mod:`.plots`: a split scored beside those baselines, and its pictures;
- :mod:`.experiment`: train, run, format, per-bar signals, load.

``from quantum_alpha_jax.tasks import guardian`` gives all of their public names; importing the
package registers the model ``'guardian'`` (:mod:`quantum_alpha_jax.tasks.registry`).
"""

from quantum_alpha_jax.tasks import registry
from quantum_alpha_jax.tasks.guardian.baselines import baseline_predictions
from quantum_alpha_jax.tasks.guardian.baselines import training_statistics
from quantum_alpha_jax.tasks.guardian.evaluation import evaluate
from quantum_alpha_jax.tasks.guardian.evaluation import risk_calibration
from quantum_alpha_jax.tasks.guardian.experiment import bar_signals
from quantum_alpha_jax.tasks.guardian.experiment import evaluate_saved
from quantum_alpha_jax.tasks.guardian.experiment import format_results
from quantum_alpha_jax.tasks.guardian.experiment import load
from quantum_alpha_jax.tasks.guardian.experiment import run
from quantum_alpha_jax.tasks.guardian.experiment import saved_signals
from quantum_alpha_jax.tasks.guardian.experiment import SIGNAL_COLUMNS
from quantum_alpha_jax.tasks.guardian.experiment import train
from quantum_alpha_jax.tasks.guardian.labels import BEAR
from quantum_alpha_jax.tasks.guardian.labels import BULL
from quantum_alpha_jax.tasks.guardian.labels import classify_trend
from quantum_alpha_jax.tasks.guardian.labels import realised_volatility
from quantum_alpha_jax.tasks.guardian.labels import risk_levels
from quantum_alpha_jax.tasks.guardian.labels import rule_labels
from quantum_alpha_jax.tasks.guardian.labels import SIDEWAYS
from quantum_alpha_jax.tasks.guardian.labels import trailing_features
from quantum_alpha_jax.tasks.guardian.labels import trend_statistic
from quantum_alpha_jax.tasks.guardian.labels import VOLATILITY_FLOOR
from quantum_alpha_jax.tasks.guardian.losses import Augmentation
from quantum_alpha_jax.tasks.guardian.losses import gaussian_kl
from quantum_alpha_jax.tasks.guardian.losses import nt_xent
from quantum_alpha_jax.tasks.guardian.losses import overlapping
from quantum_alpha_jax.tasks.guardian.task import EVALUATION_KEY
from quantum_alpha_jax.tasks.guardian.task import example_batch
from quantum_alpha_jax.tasks.guardian.task import GuardianTask
from quantum_alpha_jax.tasks.guardian.task import LABEL_SOURCES
from quantum_alpha_jax.tasks.guardian.task import loss_metrics
from quantum_alpha_jax.tasks.guardian.task import MIN_WINDOW
from quantum_alpha_jax.tasks.guardian.task import predict_batch
from quantum_alpha_jax.tasks.guardian.task import RISK_LEVELS
from quantum_alpha_jax.tasks.guardian.task import window_spec

make_task = GuardianTask.from_config

ENTRY = registry.register(
    'guardian', title='Guardian', make_task=make_task, window_spec=window_spec,
    metrics=loss_metrics, run=run, load=load, bar_signals=saved_signals,
    signal_columns=SIGNAL_COLUMNS, evaluate=evaluate_saved, format_results=format_results,
    export_fns='quantum_alpha_jax.ship.export.inference:guardian')
