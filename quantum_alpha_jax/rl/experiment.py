"""An RL run: store → markets → agent training in jitted chunks → best checkpoint → backtests.

The loop. Training runs in chunks of ``config.train.eval_every_updates`` updates, each one call of
the agent's jitted ``train`` (rollouts and gradient steps inside ``lax.scan``). Between chunks the
host writes the per-update metrics (TensorBoard + ``metrics.jsonl``, every
``log_every_updates``), checks them for NaN/inf, scores the greedy policy on the validation tapes
(log equity growth, mean over symbols) and saves an Orbax checkpoint of the whole training state
(parameters, optimiser states, environments, replay buffer, random key) with that score, keeping
the latest few and the best. A killed run resumes from its latest checkpoint and continues exactly
(same config required); the chunking never changes the result.

At the end the best checkpoint's policy is backtested on the validation and test splits
(:func:`quantum_alpha_jax.rl.evaluate.evaluate_split`: the backtest engine, buy-and-hold, a random
policy) and ``results.json``, the learning curve and the equity plots are written.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any, Mapping

from absl import logging
import jax
import ml_collections
import numpy as np

from quantum_alpha_jax import artifacts
from quantum_alpha_jax import errors
from quantum_alpha_jax.progress import Progress
from quantum_alpha_jax.rl import agent as agent_lib
from quantum_alpha_jax.rl import ddpg
from quantum_alpha_jax.rl import env as env_lib
from quantum_alpha_jax.rl import evaluate as evaluate_lib
from quantum_alpha_jax.rl import market as market_lib
from quantum_alpha_jax.rl import plots
from quantum_alpha_jax.rl import ppo
from quantum_alpha_jax.train import checkpoint as checkpoint_lib
from quantum_alpha_jax.train import loop
from quantum_alpha_jax.train import step as step_lib
from quantum_alpha_jax.train import writers

AGENTS = {'ppo': ppo.PPO, 'ddpg': ddpg.DDPG}
VALIDATION_METRIC = 'log_return'


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """The ``train`` block of the RL configs: seed, evaluation/log cadence, checkpoints."""
  config = ml_collections.ConfigDict({
      'seed': 0,
      'eval_every_updates': 50,  # one jitted chunk, then validation and a checkpoint
      'log_every_updates': 5,
      'keep_checkpoints': 3,
      'num_devices': 0,  # 0: every local device; the environments are split over them
      'progress_interval_seconds': 10.0,
  })
  config.update(overrides)
  return config


def make_agent(agent_config: ml_collections.ConfigDict, env_params: env_lib.EnvParams):
  """The agent named by ``agent_config.name`` for the environment."""
  if agent_config.name not in AGENTS:
    raise errors.ConfigError(errors.describe(
        'config.agent.name', f'unknown agent {agent_config.name!r}',
        f'use one of {sorted(AGENTS)}'))
  return AGENTS[agent_config.name].from_config(agent_config, env_params)


def _check_train_config(config: ml_collections.ConfigDict) -> None:
  for name in ('eval_every_updates', 'log_every_updates', 'keep_checkpoints'):
    value = config[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise errors.ConfigError(errors.describe(f'config.train.{name}',
                                               f'{value!r} must be an integer >= 1'))


def _write_train_metrics(writer: writers.MetricWriter, metrics: Mapping[str, np.ndarray],
                         first_update: int, steps_per_update: int, log_every: int,
                         steps_per_second: float) -> dict[str, float]:
  """Writes means over each group of ``log_every`` updates; returns the last group's."""
  count = len(next(iter(metrics.values())))
  last = {}
  for begin in range(0, count, log_every):
    group = slice(begin, min(begin + log_every, count))
    update = first_update + group.stop
    episodes = metrics['episodes'][group]
    means = {name: float(np.mean(values[group])) for name, values in metrics.items()
             if name not in ('finite', 'episodes', 'episode_log_return', 'episode_final_equity')}
    means['episodes'] = float(episodes.sum())
    if episodes.sum() > 0:  # episode figures are means over the updates that finished some
      for name in ('episode_log_return', 'episode_final_equity'):
        means[name] = float(np.sum(metrics[name][group] * episodes) / episodes.sum())
    means['env_steps'] = float(update * steps_per_update)
    means['env_steps_per_second'] = steps_per_second
    writer.write(update, 'train', means)
    last = means
  return last


def train(config: ml_collections.ConfigDict, markets: Mapping[str, market_lib.SplitMarket],
          workdir: str | pathlib.Path, *, extra_record: Mapping[str, Any] | None = None
          ) -> dict[str, Any]:
  """Trains ``config.agent`` on ``markets['train']``, validating on ``markets['validation']``;
  resumes from ``workdir/checkpoints``. Returns the agent, the best policy params and a summary."""
  _check_train_config(config.train)
  for name in ('train', 'validation'):
    if name not in markets:
      raise errors.ConfigError(errors.describe('rl.train', f'no {name!r} split',
                                               'add it to config.data.splits'))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  train_params = markets['train'].params
  agent = make_agent(config.agent, train_params)
  evaluator = evaluate_lib.TapeEvaluator(agent.act)
  run_config = json.loads(json.dumps(config.to_dict(), default=str))
  mesh = step_lib.make_mesh(config.train.num_devices or None)
  agent_lib.check_envs_split(agent.num_envs, mesh)
  state = agent_lib.place_state(agent.init(jax.random.PRNGKey(config.train.seed), train_params),
                                mesh)
  num_params = int(sum(np.size(x) for x in jax.tree.leaves(agent.policy_params(state))))
  checkpoints = checkpoint_lib.Checkpoints(
      workdir / 'checkpoints', keep=config.train.keep_checkpoints, keep_best=1,
      metric=VALIDATION_METRIC, mode='max')
  record = {'update': 0, 'best_update': None, 'best_metrics': None, 'train_seconds': 0.0,
            'config': run_config, **dict(extra_record or {})}
  resume = checkpoints.latest_step()
  if resume is not None:
    saved = checkpoints.read_record(resume)
    differences = loop.config_differences(saved.get('config', {}), run_config)
    if differences:
      raise errors.ConfigError(errors.describe(
          str(workdir), f'holds a run with another config ({"; ".join(differences[:6])})',
          'pass a new --workdir, or delete the old one to start again'))
    state, record = checkpoints.restore(resume, state)
    state = agent_lib.place_state(state, mesh)
    record['config'] = run_config
    logging.info('Resumed from %s at update %d', workdir / 'checkpoints', resume)
  writer = writers.MetricWriter(workdir, resume_step=resume)
  update = int(record['update'])
  progress = Progress(total=agent.num_updates - update, description=f'{agent.name} (from update '
                      f'{update})', unit='updates',
                      interval_seconds=config.train.progress_interval_seconds)
  run_start = time.perf_counter() - float(record['train_seconds'])
  chunk_rates = []
  try:
    while update < agent.num_updates:
      count = min(config.train.eval_every_updates, agent.num_updates - update)
      start = time.perf_counter()
      state, metrics = agent.train(state, train_params, count)
      state = agent_lib.place_state(state, mesh)  # keep the split the next chunk compiled for
      metrics = jax.device_get(metrics)
      seconds = time.perf_counter() - start
      rate = count * agent.steps_per_update / seconds
      chunk_rates.append(rate)
      for index in range(count):
        step_lib.check_finite({name: values[index] for name, values in metrics.items()},
                              update + index + 1)
      last = _write_train_metrics(writer, metrics, update, agent.steps_per_update,
                                  config.train.log_every_updates, rate)
      update += count
      validation = evaluator.log_returns(agent.policy_params(state), markets['validation'])
      validation['env_steps'] = float(update * agent.steps_per_update)
      writer.write(update, 'validation', validation)
      best = (record['best_metrics'] or {}).get(VALIDATION_METRIC)
      if best is None or validation[VALIDATION_METRIC] > best:
        record['best_update'], record['best_metrics'] = update, validation
      record['update'] = update
      record['train_seconds'] = time.perf_counter() - run_start
      checkpoints.save(update, state, None, artifacts.json_ready(record), metrics=validation)
      progress.update(count, env_steps_per_s=f'{rate:,.0f}',
                      episode_log_return=f'{last.get("episode_log_return", float("nan")):.4f}',
                      validation_log_return=f'{validation[VALIDATION_METRIC]:.4f}')
  finally:
    progress.close()
    writer.close()
  best_update = record['best_update'] if record['best_update'] is not None else update
  if best_update != update:
    best_state, _ = checkpoints.restore(best_update, state)
  else:
    best_state = state
  checkpoints.close()
  train_seconds = float(record['train_seconds'])
  summary = {
      'agent': agent.name, 'updates': update, 'env_steps': update * agent.steps_per_update,
      'steps_per_update': agent.steps_per_update, 'num_params': num_params,
      'num_devices': mesh.size,
      'best_update': best_update, 'best_validation': record['best_metrics'],
      'train_seconds': train_seconds,
      'env_steps_per_second': update * agent.steps_per_update / train_seconds
                              if train_seconds else None,
      # Chunks after the first exclude the jit compile.
      'env_steps_per_second_steady': float(np.median(chunk_rates[1:])) if len(chunk_rates) > 1
                                     else None,
      'markets': {name: market.summary() for name, market in markets.items()},
  }
  return {'agent': agent, 'evaluator': evaluator, 'params': agent.policy_params(best_state),
          'summary': summary}


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> dict[str, Any]:
  """Builds the markets of ``config.data``, trains ``config.agent`` in ``workdir`` (resuming if it
  holds a run), backtests the best policy on ``config.evaluation.splits`` and writes
  ``results.json`` and the plots."""
  workdir = pathlib.Path(workdir)
  markets, normalizer = market_lib.build_markets(config.data, config.env, config.train.seed)
  for name in config.evaluation.splits:
    if name not in markets:
      raise errors.ConfigError(errors.describe('config.evaluation.splits', f'no split {name!r}',
                                               f'use some of {sorted(markets)}'))
  workdir.mkdir(parents=True, exist_ok=True)
  artifacts.write_json(workdir / 'normalizer.json', normalizer.to_dict())
  trained = train(config, markets, workdir, extra_record={'normalizer': normalizer.to_dict()})
  agent = trained['agent']
  results = {'model': agent.name, 'workdir': str(workdir), 'train': trained['summary'],
             'env': markets['train'].params.rules()}
  for name in config.evaluation.splits:
    evaluated = evaluate_lib.evaluate_split(
        trained['evaluator'], trained['params'], markets[name], workdir / name,
        random_seeds=config.evaluation.random_seeds, seed=config.train.seed, label=agent.name)
    evaluated.pop('targets')  # per-bar targets live in <split>/targets.csv
    results[name] = evaluated
  results['plots'] = {'learning_curve': str(plots.plot_learning_curve(
      workdir / 'metrics.jsonl', workdir / 'learning_curve.png',
      f'{agent.name}: learning curve ({config.name})'))}
  results['config'] = config.to_dict()
  results['results_json'] = str(artifacts.write_results(workdir, results))
  return results


def format_results(results: Mapping[str, Any]) -> str:
  """A short table for people: the agent beside buy-and-hold and random on each split."""
  train_summary = results['train']
  rate = train_summary.get('env_steps_per_second_steady') or train_summary['env_steps_per_second']
  lines = [f'{results["model"]} run in {results["workdir"]}: {train_summary["updates"]} updates, '
           f'{train_summary["env_steps"]:,} env steps, best at update '
           f'{train_summary["best_update"]}, {rate or 0:,.0f} env steps/s']
  label = results['model']
  percent = lambda value: '—' if value is None else f'{value:+.2%}'
  number = lambda value: '—' if value is None else f'{value:.2f}'
  for split in ('validation', 'test'):
    report = results.get(split)
    if not isinstance(report, Mapping):
      continue
    seeds = next(iter(report['symbols'].values()))['random']['seeds']
    lines.append(f'\n{split}: total return (Sharpe, trades)   {label:<24} buy and hold'
                 f'             random (mean of {seeds})')
    for symbol, entry in report['symbols'].items():
      agent, hold, rand = entry[label], entry['buy_and_hold'], entry['random']
      lines.append(f'  {symbol:<10} {entry["bars"]:>7} bars         '
                   f'{percent(agent["total_return"]):>8} ({number(agent["sharpe"])}, '
                   f'{agent["trades"]}){"":4} {percent(hold["total_return"]):>8} '
                   f'({number(hold["sharpe"])}){"":8} {percent(rand["total_return_mean"]):>8}')
    lines.append(f'  targets: {report["targets_csv"]}; equity: {report["equity_png"]}')
  lines.append(f'learning curve: {results["plots"]["learning_curve"]}')
  lines.append(f'results: {results["results_json"]}')
  return '\n'.join(lines)
