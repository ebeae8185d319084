"""Offline trajectories for the Strategist (Decision Transformer): behaviour episodes on the bars of
a split, their fee-aware rewards and returns-to-go, and a Grain source over them.

Episode. ``L = episode_length`` consecutive bars of one symbol and segment, rows ``r .. r+L-1``,
plus the bar before (``r-1``, whose close decides the position held into the episode) and the bar
after (``r+L``, which pays the last decision). Step ``t`` decides at the CLOSE of bar ``r+t``:

- state ``s_t = [z(features of bar r+t), p_{t-1}]`` (45 values): the 44 features normalised as in
  :meth:`windows.WindowSource.gather` with a one-bar window, i.e. each bar relative to itself
  (prices as ``log(x / close)``, volumes as ``log(v / volume_ma)``, OBV 0) and z-scored with
  statistics of the training split (:func:`fit_normalizer`), plus the position ``p_{t-1}`` held
  into the decision. A bar's state uses that bar alone, so token ``t`` never sees a later bar (a
  window normalised to its LAST bar would leak the future into the earlier tokens).
- action ``a_t`` ∈ ``ACTIONS = (hold, buy, sell)`` = (0, 1, 2) and size ``σ_t`` ∈ [0, 1] give the
  target position ``p_t`` (a fraction of equity): hold keeps ``p_{t-1}``; buy goes long ``σ_t``
  (also re-sizing an existing long); sell goes flat, or short ``-σ_t`` with ``allow_short``.
  Actions are canonical: a step whose position does not change is a hold, so
  ``a_t = hold if p_t = p_{t-1}, buy if p_t > 0, sell otherwise`` and ``σ_t = |p_t|``
  (:func:`actions_from_positions` / :func:`next_position` are inverse).
- reward ``ρ_t = reward_scale · log(E_{t+1} / E_t)`` with ``E_t`` the equity at the close of bar
  ``r+t`` from the backtest's fill model (``fills.simulate_batch``: ``p_t`` fills at the open of
  bar ``r+t+1`` paying the fee (0.1%) and slippage on the traded notional, weights drift between
  changes). ``Σ ρ_t`` is the episode's log-return after costs.
- returns-to-go ``R_t = Σ_{j=t}^{L-1} γ^{j-t} ρ_j`` (γ = ``discount``); the model's return token is
  ``rtg_scale · R_t`` (1000: units of 0.1%, so a 1% episode is 10). With ``condition_on='behaviour'`` the
  token is instead ``rtg_scale`` times the mean ``R_0`` of the episode's behaviour over the training
  split, the same at every step (:func:`episodes.behaviour_means`). Why: on a market, an episode's realised
  return is mostly luck, and a realised return-to-go encodes the future position (a high ``R_t``
  means "stay long", ``R_t = 0`` means "stay flat") whatever the state says, so a model conditioned
  on it learns to hold and ignores the state (the Strategist then acts like a late buy-and-hold).
  A behaviour's mean return says how good a behaviour is, not how lucky an episode was ("You Can't
  Count on Luck", Paster et al., 2022), so a high target selects the best behaviour's rule, which
  reads the state.

The initial position ``p_{-1}`` is flat with probability ``initial_flat_probability``, else the
episode's size (long, or short with ``allow_short``); it is bought at the open of bar ``r`` from
bar ``r-1``'s decision, outside the episode's rewards, as if held from earlier. A policy rolled out
over consecutive episodes therefore starts each one from the position the previous one left.

Behaviour policies (each episode follows one, drawn with ``policy_weights``; oracle, trend and
mean-reversion positions are levels in {-1, 0, 1} times the episode's size from ``sizes``):

- ``oracle``: hindsight-optimal levels for the episode's realised next-bar log-returns
  ``g_t = log(c_{r+t+1} / c_{r+t})`` plus ``noise · std(g) · N(0, 1)`` (one level of
  ``oracle_noise`` per episode; 0 is the exact hindsight oracle): maximise
  ``Σ_t ℓ_t g̃_t - cost · Σ_t |ℓ_t - ℓ_{t-1}|`` by dynamic programming, ``cost`` = fee + slippage.
- ``trend``: long while ``EMA_12 > EMA_26`` and ``close > SMA_50``; out (or short) while both say
  down; otherwise keep.
- ``momentum``: one behaviour per ``(k, z)`` of ``momentum_rules``: long while the trailing
  ``k``-bar return exceeds ``z · volatility_240 · sqrt(k)``, out (or short) below minus that,
  otherwise keep. Look-backs 3, 12 and 60 span returns from ruinous (3 bars: fees on noise) to the
  best rules, so a return target has causal behaviours to choose between.
- ``mean_reversion``: long when ``RSI_14 < 30``; out (or short) when ``RSI_14 > 70``; flat again
  once ``45 <= RSI_14 <= 55``; otherwise keep.
- ``random``: at each bar with a per-episode probability in [0.02, 0.15], buy (size uniform in
  [0.1, 1]) or sell, with equal chances.

- ``flat``: out of the market (sells the initial position at the episode's first open).

Selection. With ``selection='sampled'`` each episode follows one behaviour drawn with
``policy_weights``. With ``selection='best'`` every behaviour of positive weight is acted from the
same start and the episode keeps the one whose return after fees is highest: the choice uses the
episode's future (training labels only, like the Oracle's targets), the positions are those of a
causal rule, so a model imitating the kept episodes must tell from the past which rule the coming
bars will favour (trend in a trend, flat in a sideways chop). With ``condition_on='behaviour'`` the
kept episodes form one behaviour, "the best rule", and carry one token. With ``contrast_fraction``
a share of the starts keeps instead another behaviour drawn at random (a contrast episode), whose
token is that behaviour's mean return among contrast episodes: every such token is below the
winners', so the model learns what a lower target asks for and the conditioning curve can rise.
With ``selection='each_bar'`` the choice is made again at every bar: the episode takes, bar by
bar, the action of whichever behaviour, acted from the position held into that bar, earns most
over the next ``selection_horizon`` bars (a receding-horizon choice of rule: flat once the coming
hours turn against the trend, trend once they favour it), so a label follows the regime of the
bars it is on rather than the one the episode started in.
With ``selection_horizon`` H hindsight sees the episode's bars and the next H, each behaviour
acting on through them, and the episode keeps its first L bars: the winner is the rule the coming
hours favour rather than the one the noise of one context favoured, and the oracle plans over them.
With ``oracle_cost_multiplier`` k > 1 the oracle plans as if each change cost k times the fee, so it
follows the sustained moves (which the past can foretell) and ignores the next bars' noise.

The rules (trend, momentum, mean reversion) deviate at random with ``rule_noise`` (a per-episode
rate: at such a bar they go long or out at random) and come back when their rule next fires, so the
data shows recoveries from positions the rule would not hold (what a free-running policy meets).
Trend, momentum and mean reversion read bars ``<= r+t`` only: they are causal and are also run over whole
test periods as baselines (:func:`heuristic_positions`). Everything is vectorised over episodes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Mapping, Sequence

import grain
import numpy as np
import pandas as pd

from quantum_alpha_jax import errors
from quantum_alpha_jax import fills
from quantum_alpha_jax.data import episodes as episodes_lib
from quantum_alpha_jax.data import policies
from quantum_alpha_jax.data import windows
from quantum_alpha_jax.data.features import FEATURES

# Actions and behaviour policies (data/policies.py), bound here: the Strategist, the backtest and
# the service read them as part of the trajectory interface.
ACTIONS, HOLD, BUY, SELL = policies.ACTIONS, policies.HOLD, policies.BUY, policies.SELL
HEURISTICS, RULES = policies.HEURISTICS, policies.RULES
MOMENTUM_LOOKBACKS = policies.MOMENTUM_LOOKBACKS
actions_from_positions = policies.actions_from_positions
next_position = policies.next_position
discounted_returns_to_go = policies.discounted_returns_to_go
hindsight_policy = policies.hindsight_policy
hindsight_levels = policies.hindsight_levels
rule_events = policies.rule_events
rule_actions = policies.rule_actions
trend_levels = policies.trend_levels
momentum_levels = policies.momentum_levels
mean_reversion_levels = policies.mean_reversion_levels
random_positions = policies.random_positions
heuristic_positions = policies.heuristic_positions
POLICIES = policies.POLICIES
STATE_SIZE = len(FEATURES) + 1  # features + the position held into the decision
BAR_SPEC = episodes_lib.BAR_SPEC
# The episodes of a split (data/episodes.py), bound here for the Strategist's evaluation.
fit_normalizer = episodes_lib.fit_normalizer
normalized_features = episodes_lib.normalized_features
episode_starts = episodes_lib.episode_starts
generate_episodes = episodes_lib.generate_episodes
episode_rewards = episodes_lib.episode_rewards


@dataclasses.dataclass(frozen=True)
class TrajectorySpec:
  """How episodes are cut, acted and scored (see the module docstring)."""

  episode_length: int
  stride: int = 1  # bars between consecutive episode starts in the training split
  evaluation_stride: int = 0  # the same for the other splits; 0: episode_length (no overlap)
  discount: float = 0.99
  reward_scale: float = 1.0
  rtg_scale: float = 1000.0
  allow_short: bool = False
  policies: tuple[str, ...] = ('oracle', 'trend', 'mean_reversion', 'random')
  policy_weights: tuple[float, ...] = (4.0, 1.0, 1.0, 1.0)
  oracle_noise: tuple[float, ...] = (0.0, 0.5, 1.0, 2.0)
  # (look-back bars, threshold in standard deviations) per momentum behaviour (module docstring).
  momentum_rules: tuple[tuple[int, float], ...] = ((12, 0.5), (60, 0.5), (60, 1.0))
  # Rule behaviours (trend, momentum, mean reversion) deviate: at each bar, with a per-episode
  # probability drawn uniformly in [0, rule_noise], they go long or out at random instead; they
  # come back when their rule next fires, so the data shows recoveries from any position.
  rule_noise: float = 0.0
  # What the return tokens carry: 'realised' (each episode's own return-to-go, as in the paper) or
  # 'behaviour' (the mean first return-to-go of the episode's behaviour on the training split, the
  # same at every step: what the behaviour earns on average, not its luck; module docstring).
  condition_on: str = 'realised'
  # Which behaviour an episode keeps: 'sampled' (one drawn per start with policy_weights) or 'best'
  # (every behaviour of positive weight is acted from the start and the one with the highest
  # return after fees over the episode is kept: hindsight picks the behaviour, causal rules act it;
  # with condition_on='behaviour' every episode then carries one token, the kept episodes' mean
  # R_0 on the training split; module docstring). 'each_bar': the winners relabelled bar by bar, each
  # bar taking the action of the behaviour that earns most over the next selection_horizon bars
  # from the position held (causal rules and flat only).
  selection: str = 'sampled'
  # With selection='best': the share of starts that keep, instead of the winner, another of the
  # behaviours drawn uniformly (contrast episodes). With condition_on='behaviour' they carry their
  # behaviour's mean return among contrast episodes, the winners one higher token, so the tokens
  # span good and worse behaviours and a target below the best asks for a worse one.
  contrast_fraction: float = 0.0
  contrast_policies: tuple[str, ...] = ()  # the contrast's behaviours (e.g. ('flat',)); (): any
  # Bars after the episode that hindsight sees, each behaviour acting on through them (the episode
  # keeps its first episode_length bars): with selection='best' the winner has the highest return
  # over the episode and these bars (which rule the coming hours favour, not one context of
  # noise); the oracle plans over them. 0: the episode alone.
  selection_horizon: int = 0
  # The hindsight oracle plans with this multiple of the real cost per unit of position change:
  # above 1 it ignores moves smaller than a few fees and follows the sustained ones, which the past
  # bars can foretell (at 1 it trades the next bars' noise, which they cannot).
  oracle_cost_multiplier: float = 1.0
  sizes: tuple[float, ...] = (0.25, 0.5, 0.75, 1.0)
  initial_flat_probability: float = 0.5
  fee_rate: float = fills.DEFAULT_FEE_RATE
  slippage_bps: float = fills.DEFAULT_SLIPPAGE_BPS
  seed: int = 0

  def __post_init__(self):
    where = 'config.trajectories'
    for name in ('policies', 'policy_weights', 'oracle_noise', 'sizes', 'contrast_policies'):
      value = getattr(self, name)
      value = (value,) if isinstance(value, (str, int, float)) else tuple(value)
      object.__setattr__(self, name, value)
    object.__setattr__(self, 'momentum_rules',
                       tuple((int(k), float(z)) for k, z in self.momentum_rules))
    checks = [
        ('episode_length', self.episode_length, isinstance(self.episode_length, (int, np.integer))
         and self.episode_length >= 2, 'use an integer >= 2 (config.model.context_length)'),
        ('stride', self.stride, isinstance(self.stride, (int, np.integer)) and self.stride >= 1,
         'use an integer >= 1'),
        ('evaluation_stride', self.evaluation_stride,
         isinstance(self.evaluation_stride, (int, np.integer)) and self.evaluation_stride >= 0,
         'use 0 (= episode_length) or a positive integer'),
        ('discount', self.discount, 0 < self.discount <= 1, 'use a discount in (0, 1]'),
        ('reward_scale', self.reward_scale, self.reward_scale > 0, 'use a positive scale'),
        ('rtg_scale', self.rtg_scale, self.rtg_scale > 0, 'use a positive scale, e.g. 1000'),
        ('rule_noise', self.rule_noise, 0 <= self.rule_noise <= 1, 'use a probability in [0, 1]'),
        ('selection_horizon', self.selection_horizon,
         isinstance(self.selection_horizon, (int, np.integer)) and self.selection_horizon >= 0,
         'use 0 (the episode alone) or a number of bars'),
        ('oracle_cost_multiplier', self.oracle_cost_multiplier,
         self.oracle_cost_multiplier >= 1, 'use a multiple >= 1 of the cost'),
        ('contrast_fraction', self.contrast_fraction, 0 <= self.contrast_fraction < 1,
         "use a share in [0, 1) (with selection='best')"),
        ('initial_flat_probability', self.initial_flat_probability,
         0 <= self.initial_flat_probability <= 1, 'use a probability in [0, 1]'),
        ('fee_rate', self.fee_rate, 0 <= self.fee_rate < 1, 'use a rate per side such as 0.001'),
        ('slippage_bps', self.slippage_bps, 0 <= self.slippage_bps < 10_000, 'use basis points'),
    ]
    for name, value, valid, fix in checks:
      if not valid:
        raise errors.ConfigError(errors.describe(f'{where}.{name}', f'{value!r} is invalid', fix))
    if self.condition_on not in ('realised', 'behaviour'):
      raise errors.ConfigError(errors.describe(
          f'{where}.condition_on', f'{self.condition_on!r}', "use 'realised' or 'behaviour'"))
    if self.selection not in ('sampled', 'best', 'each_bar'):
      raise errors.ConfigError(errors.describe(
          f'{where}.selection', f'{self.selection!r}', "use 'sampled', 'best' or 'each_bar'"))
    unknown = [p for p in self.policies if p not in POLICIES]
    if unknown or not self.policies:
      raise errors.ConfigError(errors.describe(
          f'{where}.policies', f'unknown or no policies {unknown or list(self.policies)}',
          f'use some of {POLICIES}'))
    if (len(self.policy_weights) != len(self.policies) or any(w < 0 for w in self.policy_weights)
        or sum(self.policy_weights) <= 0):
      raise errors.ConfigError(errors.describe(
          f'{where}.policy_weights', f'{self.policy_weights} for policies {self.policies}',
          'give one non-negative weight per policy, not all zero'))
    if self.selection == 'each_bar':  # each bar re-plans the causal rules and flat ahead
      unfit = sorted({p for p, w in zip(self.policies, self.policy_weights) if w > 0}
                     - {'trend', 'momentum', 'mean_reversion', 'flat'})
      if unfit or self.selection_horizon < 1:
        raise errors.ConfigError(errors.describe(
            where, f"selection='each_bar' with policies {unfit} and selection_horizon "
            f'{self.selection_horizon}', 'use causal rules and flat only, and a horizon of >= 1 bar'))
    if any(p not in self.policies for p in self.contrast_policies):
      raise errors.ConfigError(errors.describe(
          f'{where}.contrast_policies', f'{self.contrast_policies}',
          f'use some of the policies {self.policies}, or () for any'))
    if not self.oracle_noise or any(n < 0 for n in self.oracle_noise):
      raise errors.ConfigError(errors.describe(
          f'{where}.oracle_noise', f'{self.oracle_noise}', 'give noise levels >= 0, e.g. (0, 1)'))
    if 'momentum' in self.policies and (not self.momentum_rules or any(
        k not in MOMENTUM_LOOKBACKS or z < 0 for k, z in self.momentum_rules)):
      raise errors.ConfigError(errors.describe(
          f'{where}.momentum_rules', f'{self.momentum_rules}',
          f'give (look-back, threshold >= 0) pairs with look-backs in {MOMENTUM_LOOKBACKS}'))
    if not self.sizes or any(not 0 < s <= 1 for s in self.sizes):
      raise errors.ConfigError(errors.describe(
          f'{where}.sizes', f'{self.sizes}', 'give position sizes in (0, 1], e.g. (0.5, 1.0)'))

  @classmethod
  def from_config(cls, config: Mapping[str, Any], episode_length: int) -> TrajectorySpec:
    """From ``config.trajectories`` (a ConfigDict or dict) and the model's context length."""
    values = dict(config)
    fields = {field.name for field in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise errors.ConfigError(errors.describe(
          'config.trajectories', f'unknown keys {unknown}', f'use some of {sorted(fields)}'))
    return cls(episode_length=int(episode_length), **values)

  @property
  def cost(self) -> float:
    """Proportional cost of one unit of position change: fee plus slippage (the oracle's model)."""
    return self.fee_rate + self.slippage_bps / 10_000

  @property
  def behaviour_table(self) -> tuple[tuple[str, str, Any, float], ...]:
    """``(name, policy, parameter, mixture weight)`` per behaviour: one per oracle noise level and
    one per momentum rule (each sharing its policy's weight), one per other policy. A batch's
    ``behaviour`` indexes it."""
    table = []
    for policy, weight in zip(self.policies, self.policy_weights):
      if policy == 'oracle':
        share = weight / len(self.oracle_noise)
        table += [(f'oracle(noise={noise:g})', policy, float(noise), share)
                  for noise in self.oracle_noise]
      elif policy == 'momentum':
        share = weight / len(self.momentum_rules)
        table += [(f'momentum({bars},{threshold:g})', policy, (bars, threshold), share)
                  for bars, threshold in self.momentum_rules]
      else:
        table.append((policy, policy, 0.0, float(weight)))
    return tuple(table)

  @property
  def behaviours(self) -> tuple[str, ...]:
    """Names of the behaviour policies (``behaviour_table``'s first column)."""
    return tuple(row[0] for row in self.behaviour_table)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------
# Episodes of a split.


class TrajectorySource(grain.sources.RandomAccessDataSource):
  """The episodes of one split: ``gather(indices)`` reads a batch of episodes (-1 = padding).

  ``anchors`` are episode ids ``0..E-1`` (what the Grain pipelines of :mod:`windows` shuffle and
  batch); ``rows`` are the split's usable bars and ``episodes`` the tables of
  :func:`generate_episodes`.
  """

  def __init__(self, arrays: windows.WindowArrays, spec: TrajectorySpec,
               episodes: Mapping[str, np.ndarray], normalizer: windows.Normalizer,
               rows: np.ndarray, name: str = ''):
    self.arrays = arrays
    self.spec = spec
    self.episodes = {key: np.ascontiguousarray(value) for key, value in episodes.items()}
    self.normalizer = normalizer
    self.rows = np.asarray(rows, np.int64)
    self.name = name
    self.anchors = np.arange(len(self.episodes['start_row']), dtype=np.int64)
    if len(self.anchors) == 0:
      raise errors.DataError(errors.describe(
          f'TrajectorySource {name!r}', f'no episode of {spec.episode_length + 2} consecutive '
          'usable bars', 'use a longer split or a shorter config.model.context_length'))
    if normalizer.spec.encoder_length != 1:
      raise errors.ConfigError(errors.describe(
          f'TrajectorySource {name!r}', 'the normaliser was not fitted on one-bar windows',
          'fit it with data.trajectories.fit_normalizer'))

  def __len__(self) -> int:
    return len(self.anchors)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    batch = self.gather(np.asarray([index]))
    return {name: value[0] for name, value in batch.items()}

  def __repr__(self) -> str:
    return f'TrajectorySource({self.name!r}, episodes={len(self)}, spec={self.spec})'

  def gather(self, indices: np.ndarray) -> dict[str, np.ndarray]:
    """Episodes ``indices [batch]`` (-1: padding, ``mask`` 0) as model inputs.

    Returns ``states [batch, L, 45]``, ``actions [batch, L]`` int32, ``sizes``, ``size_mask``,
    ``rtg`` (scaled tokens), ``rewards``, ``step_mask [batch, L]`` float32, ``timesteps
    [batch, L]`` int32, and per episode ``mask``, ``behaviour``, ``start_row``, ``symbol``.
    """
    indices = np.asarray(indices, np.int64).reshape(-1)
    real = indices >= 0
    index = np.where(real, indices, 0)
    length = self.spec.episode_length
    table = self.episodes
    starts = table['start_row'][index]
    positions = table['positions'][index]
    initial = table['initial_position'][index]
    features = normalized_features(self.arrays, self.normalizer,
                                   starts[:, None] + np.arange(length))
    previous = np.concatenate([initial[:, None], positions[:, :-1]], axis=1)
    actions, sizes = actions_from_positions(positions, initial)
    sized = (actions == BUY) | ((actions == SELL) & self.spec.allow_short)
    step_mask = np.broadcast_to(real[:, None], (len(index), length)).astype(np.float32)
    return {
        'states': np.concatenate([features, previous[..., None]], axis=-1).astype(np.float32),
        'actions': actions,
        'sizes': sizes,
        'size_mask': (sized & real[:, None]).astype(np.float32),
        'rtg': (self.return_tokens(index) * np.float32(self.spec.rtg_scale)).astype(np.float32),
        'rewards': table['rewards'][index],
        'timesteps': np.broadcast_to(np.arange(length, dtype=np.int32), (len(index), length)).copy(),
        'step_mask': step_mask,
        'mask': real.astype(np.float32),
        'behaviour': np.where(real, table['behaviour'][index], -1).astype(np.int32),
        'start_row': np.where(real, starts, -1).astype(np.int32),
        'symbol': np.take(self.arrays.symbol, starts).astype(np.int32),
    }

  def return_tokens(self, index: np.ndarray) -> np.ndarray:
    """The (unscaled) return the model is conditioned on at each step of episodes ``index``,
    ``[batch, L]``: the realised return-to-go, or the behaviour's mean (``spec.condition_on``)."""
    if self.spec.condition_on == 'behaviour':
      return np.repeat(self.episodes['condition'][index][:, None], self.spec.episode_length, 1)
    return self.episodes['returns_to_go'][index]

  def summary(self) -> dict[str, Any]:
    """Episode counts and undiscounted episode returns (log, after costs) per behaviour."""
    names = self.spec.behaviours
    totals = self.episodes['rewards'].sum(1) / self.spec.reward_scale
    out = {}
    for index, name in enumerate(names):
      selected = totals[self.episodes['behaviour'] == index]
      if selected.size:
        out[name] = {'episodes': int(selected.size), 'mean_return': float(selected.mean()),
                     'std_return': float(selected.std()),
                     'p10_return': float(np.quantile(selected, 0.1)),
                     'p90_return': float(np.quantile(selected, 0.9))}
    return {'episodes': int(len(self)), 'behaviours': out}


def split_rows(arrays: windows.WindowArrays, splits: Sequence[windows.Split],
               purge_bars: int) -> dict[str, np.ndarray]:
  """The usable bars of each split (valid, no long hole), later splits purged by ``purge_bars``."""
  return windows.split_anchors(arrays, BAR_SPEC, splits, purge_bars)


def make_datasets(frames: Mapping[str, pd.DataFrame], spec: TrajectorySpec,
                  splits: Sequence[windows.Split], batch_size: int,
                  cache_dir: str | os.PathLike[str], seed: int = 0, *,
                  train_split: str = 'train', normalizer: windows.Normalizer | None = None,
                  shard_index: int | None = None, shard_count: int | None = None,
                  num_devices: int | None = None
                  ) -> tuple[dict[str, windows.SplitData], windows.Normalizer]:
  """Episodes per split as :class:`windows.SplitData` (so ``train.loop`` runs unchanged): the
  ``train_split`` shuffled and repeated, the others single padded passes. Fits the one-bar
  normaliser on ``train_split`` unless one is given."""
  arrays = windows.WindowArrays.from_frames(frames, cache_dir)
  by_name = {split.name: split for split in splits}
  if normalizer is None and train_split not in by_name:
    raise errors.ConfigError(errors.describe(
        'trajectories.make_datasets', f'no split named {train_split!r} among {list(by_name)} to fit '
        'the normaliser on', 'add it, or pass a fitted normalizer'))
  rows = split_rows(arrays, splits, purge_bars=spec.episode_length + 2)
  if normalizer is None:
    normalizer = fit_normalizer(arrays, rows[train_split], train_split=by_name[train_split],
                                seed=seed)
  shard_index, shard_count = windows._shard(shard_index, shard_count)  # pylint: disable=protected-access
  per_process = windows.local_batch_size(batch_size, shard_count, num_devices)
  generated = {}
  for number, split in enumerate(splits):
    training = split.name == train_split
    stride = spec.stride if training else (spec.evaluation_stride or spec.episode_length)
    # A selection horizon needs its bars after each episode (generate_episodes).
    starts = episode_starts(arrays, rows[split.name], spec.episode_length + spec.selection_horizon,
                            stride)
    generated[split.name] = generate_episodes(arrays, starts, spec, seed=seed * 1000 + number)
  if spec.condition_on == 'behaviour':
    if train_split not in generated:
      raise errors.ConfigError(errors.describe(
          'trajectories.make_datasets', f"condition_on='behaviour' needs the {train_split!r} "
          'split (the behaviours\' mean returns come from it)', 'add it to the splits'))
    if spec.selection in ('best', 'each_bar'):  # the winners one token; contrast episodes theirs
      means, group = episodes_lib.best_means(generated[train_split], spec), episodes_lib.best_groups
    else:
      means = episodes_lib.behaviour_means(generated[train_split], spec)
      group = functools.partial(episodes_lib.behaviour_groups, spec=spec)
    for episodes in generated.values():
      episodes['condition'] = means[group(episodes)].astype(np.float32)
  result = {}
  for number, split in enumerate(splits):
    training = split.name == train_split
    episodes = generated[split.name]
    source = TrajectorySource(arrays, spec, episodes, normalizer, rows[split.name], split.name)
    if training:
      dataset = windows.training_dataset(source, batch_size, seed, shard_index=shard_index,
                                         shard_count=shard_count, num_devices=num_devices)
      steps = (len(source) // shard_count) // per_process
    else:
      # Whole in every process, as in windows.make_datasets (train.loop.evaluate shards it).
      dataset = windows.evaluation_dataset(source, batch_size, shard_index=0, shard_count=1,
                                           num_devices=num_devices)
      steps = len(dataset)
    result[split.name] = windows.SplitData(split, source, dataset, steps)
  return result, normalizer


def initial_return_quantiles(source: TrajectorySource,
                             levels: Sequence[float] = (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)
                             ) -> dict[str, float]:
  """Quantiles of the episodes' first return-to-go ``R_0`` (unscaled): the range of returns the
  training data shows, from which the rollout's conditioning targets are chosen."""
  first = source.return_tokens(np.arange(len(source)))[:, 0].astype(np.float64)
  return {f'{level:g}': float(np.quantile(first, level)) for level in levels} | {
      'max': float(first.max()), 'mean': float(first.mean())}


def rows_to_runs(arrays: windows.WindowArrays, rows: np.ndarray) -> list[np.ndarray]:
  """Sorted bars ``rows`` split into runs of consecutive rows of one segment (no gap, no hole)."""
  rows = np.asarray(rows, np.int64)
  if rows.size == 0:
    return []
  segment = np.asarray(arrays.segment)[rows]
  breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(segment) != 0)) + 1
  return np.split(rows, breaks)
