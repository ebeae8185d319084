"""The episodes of a split for the Strategist: where episodes start, the behaviour positions over
them (the mixture of policies in a :class:`trajectories.TrajectorySpec`), their after-fee rewards
through the fill model and the returns-to-go. Split out of ``data/trajectories.py`` (issue #17),
which wraps them as a Grain source.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from quantum_alpha_jax import errors
from quantum_alpha_jax import fills
from quantum_alpha_jax.data import policies as policies_lib
from quantum_alpha_jax.data import windows

if TYPE_CHECKING:
  from quantum_alpha_jax.data.trajectories import TrajectorySpec

BAR_SPEC = windows.WindowSpec(1, 0)  # one bar: every state is normalised relative to itself
from quantum_alpha_jax.data.features import FEATURES


_GENERATION_CHUNK = 4096  # episodes generated at once (bounds the memory of a split's generation)


def fit_normalizer(arrays: windows.WindowArrays, rows: np.ndarray, *,
                   train_split: windows.Split | None = None, sample_size: int = 65536,
                   seed: int = 0) -> windows.Normalizer:
  """The one-bar (self-anchored) normaliser of the states, fitted on the training split's ``rows``."""
  return windows.Normalizer.fit(arrays, BAR_SPEC, rows, train_split=train_split,
                                sample_size=sample_size, seed=seed)


def normalized_features(arrays: windows.WindowArrays, normalizer: windows.Normalizer,
                        rows: np.ndarray) -> np.ndarray:
  """The state features of bars ``rows [...]``: each bar normalised relative to itself, ``[..., 44]``."""
  rows = np.asarray(rows, np.int64)
  values = np.take(arrays.features, rows.reshape(-1), axis=0)
  return normalizer.apply(values[:, None, :], values)[:, 0].reshape(rows.shape + (len(FEATURES),))


def episode_starts(arrays: windows.WindowArrays, rows: np.ndarray, episode_length: int,
                   stride: int = 1) -> np.ndarray:
  """First decision rows ``r`` whose bars ``r-1 .. r+L`` all lie in ``rows`` (sorted bars of one
  split) and in one segment; every ``stride``-th of them, ``[episodes]`` int64."""
  rows = np.asarray(rows, np.int64)
  span = episode_length + 2
  member = np.zeros(arrays.num_rows + 1, np.int64)
  member[rows] = 1
  before = np.concatenate([[0], np.cumsum(member)])
  first = rows[rows + span - 1 < arrays.num_rows]
  last = first + span - 1
  segment = np.asarray(arrays.segment)
  usable = (before[last + 1] - before[first] == span) & (segment[first] == segment[last])
  return first[usable][::stride] + 1


def episode_rewards(initial: np.ndarray, positions: np.ndarray, open_price: np.ndarray,
                    close: np.ndarray, spec: TrajectorySpec, observed: np.ndarray | None = None
                    ) -> np.ndarray:
  """Rewards ``[E, L]`` of positions ``[E, L]`` entered from ``initial [E]``, on the prices
  ``open_price, close [E, L + 2]`` of bars ``r-1 .. r+L``: the engine fills ``initial`` at bar r's
  open and ``p_t`` at bar r+t+1's open (deferred past hole-filling bars, ``observed [E, L + 2]``
  False); ``ρ_t = reward_scale · log(E_{r+t+1} / E_{r+t})``."""
  positions = np.asarray(positions, np.float64)
  targets = np.concatenate([np.asarray(initial, np.float64)[:, None], positions,
                            positions[:, -1:]], axis=1)
  state = fills.simulate_batch(targets, open_price, fee_rate=spec.fee_rate,
                                slippage_bps=spec.slippage_bps, observed=observed)
  equity = state['cash'] + state['units'] * np.asarray(close, np.float64)
  return spec.reward_scale * np.diff(np.log(equity[:, 1:]), axis=1)


def generate_episodes(arrays: windows.WindowArrays, starts: np.ndarray, spec: TrajectorySpec,
                      seed: int = 0, policies: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Acts one behaviour policy per episode starting at each row of ``starts`` and scores it: one
  drawn with the weights, or with ``spec.selection='best'`` the best after fees of every behaviour
  of positive weight acted from the same start (trajectories' module docstring).

  Returns ``start_row [E]``, ``behaviour [E]`` (index into ``spec.behaviours``; the kept one),
  ``best [E]`` (True where the episode keeps its start's winning behaviour: ``selection='best'``
  except the ``spec.contrast_fraction`` of contrast episodes, which keep another one at random),
  ``initial_position [E]``, ``positions``, ``rewards`` and ``returns_to_go`` (unscaled)
  ``[E, L]`` float32. ``policies`` overrides the mixture (e.g. ``('oracle',)`` with the spec's first
  oracle noise level: the exact hindsight oracle when it is 0).
  """
  starts = np.asarray(starts, np.int64)
  table = spec.behaviour_table
  names = spec.behaviours
  if policies is None:
    weights = np.asarray([row[3] for row in table])
  else:
    unknown = [p for p in policies if p not in policies_lib.POLICIES]
    if unknown:
      raise errors.ConfigError(errors.describe('generate_episodes', f'policies {unknown}',
                                               f'use some of {policies_lib.POLICIES}'))
    # Each named policy equally; the oracle at the spec's first noise level only.
    first = {policy: index for index, (_, policy, _, _) in reversed(list(enumerate(table)))}
    weights = np.zeros(len(table))
    for policy in policies:
      if policy not in first:
        raise errors.ConfigError(errors.describe(
            'generate_episodes', f'policy {policy!r} is not in the spec {spec.policies}'))
      weights[first[policy]] = 1.0
  probabilities = weights / weights.sum()
  rng = np.random.default_rng([spec.seed, seed, 7])
  behaviour = rng.choice(len(names), size=len(starts), p=probabilities).astype(np.int32)
  size = rng.choice(np.asarray(spec.sizes, np.float64), size=len(starts))
  flat = rng.random(len(starts)) < spec.initial_flat_probability
  direction = np.where(spec.allow_short & (rng.random(len(starts)) < 0.5), -1.0, 1.0)
  initial = np.where(flat, 0.0, direction * size)
  length = spec.episode_length
  close = np.asarray(arrays.close)
  log_close = np.log(close)
  next_returns_all = log_close[starts[:, None] + np.arange(1, length + 1)] - log_close[
      starts[:, None] + np.arange(length)]
  return_scale = float(np.std(next_returns_all)) if next_returns_all.size else 0.0
  out = {'positions': np.zeros((len(starts), length), np.float32),
         'rewards': np.zeros((len(starts), length), np.float32),
         'returns_to_go': np.zeros((len(starts), length), np.float32)}
  best = spec.selection in ('best', 'each_bar') and policies is None
  best_kept = np.zeros(len(starts), bool)  # the episode follows its start's winning behaviour
  candidates = np.flatnonzero(weights > 0)
  # Hindsight sees the episode and the next selection_horizon bars, each behaviour acting on
  # through them (the episode keeps its first L bars): the best selection scores them and the
  # oracle plans over them, a choice about the coming hours rather than one context of noise. The
  # starts must leave those bars (make_datasets cuts them with the horizon). Not with an override
  # of the policies (their callers' starts leave no horizon).
  span = length + (spec.selection_horizon if policies is None else 0)
  if span > length and (starts.max(initial=0) + span >= arrays.num_rows):
    raise errors.DataError(errors.describe(
        'generate_episodes', f'an episode start leaves fewer than {span + 1} bars for the '
        'selection horizon', 'cut the starts with episode_starts(..., episode_length + horizon)'))
  for begin in range(0, len(starts), _GENERATION_CHUNK):
    part = slice(begin, begin + _GENERATION_CHUNK)
    scored_rows = starts[part, None] + np.arange(-1, span + 1)  # [E, span + 2]: r-1 .. r+span
    rows = scored_rows[:, :length + 2]  # [E, L + 2]: r-1 .. r+L
    raw = np.take(arrays.features, scored_rows[:, 1:span + 1], axis=0).astype(np.float64)
    sizes, start_level = size[part], np.sign(initial[part])
    chunk_rng = np.random.default_rng([spec.seed, seed, begin])
    scored_open = np.take(arrays.features[:, FEATURES.index('open')],
                          scored_rows).astype(np.float64)
    scored_observed = np.take(np.asarray(arrays.observed, bool), scored_rows)
    open_price, observed = scored_open[:, :length + 2], scored_observed[:, :length + 2]

    def causal_levels(kind: int, features: np.ndarray, level: np.ndarray,
                      noisy: bool) -> np.ndarray:
      """Levels ``[E, T]`` of a causal rule or flat on raw ``features [E, T, 44]`` from ``level
      [E]``; ``noisy``: with the spec's random deviations (``rule_noise``)."""
      _, policy, parameter, _ = table[kind]
      if policy == 'flat':
        return np.zeros(features.shape[:2])
      events = policies_lib.rule_events(policy, features, spec.allow_short, parameter)
      if noisy and spec.rule_noise > 0:
        rate = chunk_rng.uniform(0.0, spec.rule_noise, size=(len(events), 1))
        deviate = chunk_rng.random(events.shape) < rate
        wrong = np.where(chunk_rng.random(events.shape) < 0.5, 1.0,
                         -1.0 if spec.allow_short else 0.0)
        events = np.where(deviate, wrong, events)
      return policies_lib.forward_fill(events, level)

    def act(kind: int, selected: np.ndarray) -> np.ndarray:
      """Positions ``[selected episodes, span]`` of behaviour ``kind`` (span = L unless a
      selection horizon extends what hindsight sees)."""
      _, policy, parameter, _ = table[kind]
      if policy == 'oracle':
        gains = np.diff(log_close[scored_rows[selected, 1:]], axis=1)  # [E, span]
        gains = gains + parameter * return_scale * chunk_rng.standard_normal(gains.shape)
        levels = policies_lib.hindsight_levels(gains, spec.cost * spec.oracle_cost_multiplier,
                                               start_level[selected],
                                               spec.allow_short)
      elif policy in ('trend', 'momentum', 'mean_reversion', 'flat'):
        levels = causal_levels(kind, raw[selected], start_level[selected], noisy=True)
      else:
        return policies_lib.random_positions(chunk_rng, (int(selected.sum()), span),
                                             initial[part][selected], spec.allow_short)
      return levels * sizes[selected, None]

    def score(positions: np.ndarray) -> np.ndarray:
      return episode_rewards(initial[part], positions.astype(np.float32), open_price, close[rows],
                             spec, observed=observed)

    def each_bar() -> tuple[np.ndarray, np.ndarray]:
      """Positions and behaviours ``[E, L]``: at each bar the action of the behaviour whose
      return over the next ``selection_horizon`` bars, acted from the position held into the bar,
      is the highest (hindsight picks the rule bar by bar, a causal rule acts it)."""
      held = initial[part].astype(np.float64)
      count, horizon = len(held), spec.selection_horizon  # (spec: horizon >= 1, rules and flat)
      positions = np.zeros((count, length))
      kinds = np.zeros((count, length), np.int32)
      for t in range(length):
        ahead, prices = slice(t, t + horizon), slice(t, t + horizon + 2)
        totals, first = [], []
        for kind in candidates:
          planned = causal_levels(kind, raw[:, ahead], np.sign(held), noisy=False) * sizes[:, None]
          totals.append(episode_rewards(
              held, planned.astype(np.float32), scored_open[:, prices],
              close[scored_rows[:, prices]], spec, observed=scored_observed[:, prices]).sum(axis=1))
          first.append(planned[:, 0])
        winner = np.argmax(np.stack(totals), axis=0)  # the first of equals: table order
        held = np.stack(first)[winner, np.arange(count)]
        positions[:, t], kinds[:, t] = held, candidates[winner]
      return positions, kinds

    if best:  # every behaviour from every start; keep the one with the highest episode return
      everyone = np.ones(len(sizes), bool)
      acted = np.stack([act(kind, everyone) for kind in candidates])  # [B, E, span]
      scored = np.stack([episode_rewards(initial[part], positions.astype(np.float32),
                                         scored_open, close[scored_rows], spec,
                                         observed=scored_observed) for positions in acted])
      winner = np.argmax(scored.sum(axis=2), axis=0)  # the first of equals: table order
      if spec.contrast_fraction > 0 and len(candidates) > 1:
        # Contrast episodes: another behaviour than the winner, drawn uniformly, so that the
        # return tokens span good and worse behaviours (a conditioning curve to climb).
        # (among spec.contrast_policies when given; a start whose winner is the only one of them
        # keeps it).
        allowed = np.array([not spec.contrast_policies or table[kind][1] in spec.contrast_policies
                            for kind in candidates])
        eligible = allowed[None, :] & (np.arange(len(candidates))[None, :] != winner[:, None])
        draws = np.where(eligible, chunk_rng.random(eligible.shape), -1.0)
        other = np.argmax(draws, axis=1)
        contrast = (chunk_rng.random(len(winner)) < spec.contrast_fraction) & eligible.any(axis=1)
        chosen = np.where(contrast, other, winner)
      else:
        contrast = np.zeros(len(winner), bool)
        chosen = winner
      behaviour[part] = candidates[chosen]
      best_kept[part] = ~contrast
      positions = acted[chosen, np.arange(len(chosen)), :length]
      if spec.selection == 'each_bar':  # the winners relabelled bar by bar
        relabelled, kinds = each_bar()
        positions = np.where(contrast[:, None], positions, relabelled)
        majority = np.array([np.bincount(row, minlength=len(table)).argmax() for row in kinds])
        behaviour[part] = np.where(contrast, behaviour[part], majority)
    else:
      kinds = behaviour[part]
      positions = np.zeros((len(kinds), length))
      for kind in np.unique(kinds):
        selected = kinds == kind
        positions[selected] = act(kind, selected)[:, :length]
    positions = positions.astype(np.float32)
    rewards = score(positions)
    out['positions'][part] = positions
    out['rewards'][part] = rewards
    out['returns_to_go'][part] = policies_lib.discounted_returns_to_go(rewards, spec.discount)
  return {'start_row': starts, 'behaviour': behaviour, 'best': best_kept,
          'size': size.astype(np.float32),
          'initial_position': initial.astype(np.float32), **out}


def best_groups(episodes: Mapping[str, np.ndarray]) -> np.ndarray:
  """``[E]`` with ``selection='best'``: 0 for an episode that keeps its start's winner, else
  ``1 + behaviour`` (a contrast episode, ``TrajectorySpec.contrast_fraction``)."""
  return np.where(episodes['best'], 0, 1 + episodes['behaviour'].astype(np.int64))


def best_means(episodes: Mapping[str, np.ndarray], spec: TrajectorySpec) -> np.ndarray:
  """``[1 + behaviours]``: the mean first return-to-go of the winners' episodes, then of each
  behaviour's contrast episodes (0 where none), indexed by :func:`best_groups`."""
  return _group_means(episodes, best_groups(episodes), 1 + len(spec.behaviours))


def behaviour_groups(episodes: Mapping[str, np.ndarray], spec: TrajectorySpec) -> np.ndarray:
  """``[E]``: each episode's (behaviour, size) group, ``behaviour · len(sizes) + size index``."""
  sizes = np.asarray(spec.sizes, np.float32)
  size_index = np.argmin(np.abs(np.asarray(episodes['size'], np.float32)[:, None] - sizes), axis=1)
  return episodes['behaviour'].astype(np.int64) * len(spec.sizes) + size_index


def behaviour_means(episodes: Mapping[str, np.ndarray], spec: TrajectorySpec) -> np.ndarray:
  """``[behaviours · sizes]``: the mean first return-to-go ``R_0`` of the episodes of each
  behaviour at each size (0 for a group with none), indexed by :func:`behaviour_groups`: the
  return tokens of ``condition_on='behaviour'``. The size is part of the behaviour: the same rule
  earns more at full size when it earns at all, so a high target asks for it."""
  return _group_means(episodes, behaviour_groups(episodes, spec),
                      len(spec.behaviours) * len(spec.sizes))


def _group_means(episodes: Mapping[str, np.ndarray], groups: np.ndarray, count: int) -> np.ndarray:
  """``[count]``: the mean first return-to-go of the episodes in each group (0 for none)."""
  first = episodes['returns_to_go'][:, 0].astype(np.float64)
  numbers = np.bincount(groups, minlength=count)
  return np.bincount(groups, weights=first, minlength=count) / np.maximum(numbers, 1)
