"""K quick Oracles in one vmapped step against K sequential single runs, side by side.

  python -m benchmarks.population [--members 8] [--steps 150] [--rounds 3]

Both arms train the quick Oracle (configs/oracle.py:quick) for ``--steps`` steps on the same
batches (read once from the quick synthetic market, in the same order), with the shared train step:
the population arm is ``config.train.population = K`` (one compiled, vmapped step over the
K-stacked state; seeds 0..K-1); the sequential arm runs K single runs with those seeds one after
the other, reusing one compiled step. The arms alternate, ``--rounds`` times, in one process; each
time covers the steps of all K members from host batches (sharding included), not compilation,
which is reported apart. Prints the median seconds of each arm, the ratio of the medians and the
largest difference between the members' final params in the two arms.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--members', type=int, default=8)
  parser.add_argument('--steps', type=int, default=150)
  parser.add_argument('--rounds', type=int, default=3)
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from configs import oracle as oracle_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.data import features, synthetic, windows  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import oracle  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import population  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.train import step as step_lib  # pylint: disable=g-import-not-at-top

  config = oracle_config.get_config('quick')
  train_config = config.train
  train_config.update(seed=0, population=args.members)
  task = oracle.OracleTask.from_config(config)
  frames = {s: features.compute_features(f) for s, f in synthetic.generate_market(
      tuple(config.data.symbols), start=config.data.start, end=config.data.end).items()}
  splits = [windows.Split('train', *config.data.splits.train)]
  with tempfile.TemporaryDirectory() as cache:
    data, _ = windows.make_datasets(frames, oracle.window_spec(config), splits,
                                    train_config.batch_size, cache, num_devices=1, shard_index=0,
                                    shard_count=1)
    iterator = data['train'].iterator()
    batches = [next(iterator) for _ in range(args.steps)]
  mesh = step_lib.make_mesh(None)
  dtype = step_lib.compute_dtype(train_config.compute_dtype)
  optimizer, schedule = state_lib.make_optimizer(train_config.optimizer, args.steps)
  init = lambda rng: task.init_params(rng, batches[0])
  seeds = population.seeds(train_config)
  jitted_init = jax.jit(init)

  def single_state(seed):
    init_rng, train_rng = jax.random.split(jax.random.PRNGKey(seed))
    return step_lib.replicate(
        state_lib.TrainState.create(jitted_init(init_rng), optimizer, train_rng), mesh)

  def population_state():
    return step_lib.replicate(population.create_state(train_config, init, optimizer), mesh)

  steps = {}
  compile_seconds = {}
  for name, count, make_state in (('population', args.members, population_state),
                                  ('sequential', 1, lambda: single_state(0))):
    started = time.perf_counter()
    train_step = step_lib.make_train_step(task.loss_fn, optimizer, schedule, mesh, dtype=dtype,
                                          population=count)
    steps[name] = train_step.lower(make_state(), step_lib.shard_batch(batches[0], mesh)).compile()
    compile_seconds[name] = time.perf_counter() - started

  def run_population():
    state = population_state()
    start = time.perf_counter()
    for batch in batches:
      state, metrics = steps['population'](state, step_lib.shard_batch(batch, mesh))
    jax.block_until_ready((state, metrics))
    return time.perf_counter() - start, [population.member(state.params, k)
                                         for k in range(args.members)]

  def run_sequential():
    states = [single_state(seed) for seed in seeds]
    start = time.perf_counter()
    finals = []
    for state in states:
      for batch in batches:
        state, metrics = steps['sequential'](state, step_lib.shard_batch(batch, mesh))
      jax.block_until_ready((state, metrics))
      finals.append(state.params)
    return time.perf_counter() - start, finals

  times = {'population': [], 'sequential': []}
  finals = {}
  for round_index in range(args.rounds):
    order = (('population', run_population), ('sequential', run_sequential))
    for name, run in (order if round_index % 2 == 0 else order[::-1]):
      seconds, finals[name] = run()
      times[name].append(seconds)
      print(f'round {round_index + 1}: {name} {seconds:.2f} s', flush=True)
  difference = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                   for p, s in zip(finals['population'], finals['sequential'])
                   for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(s)))
  medians = {name: statistics.median(values) for name, values in times.items()}
  print(json.dumps({
      'members': args.members, 'steps': args.steps, 'rounds': args.rounds,
      'batch_size': int(train_config.batch_size), 'devices': mesh.size,
      'compute_dtype': step_lib.resolve_compute_dtype(train_config.compute_dtype),
      'seconds': times, 'median_seconds': medians,
      'ratio_of_medians': medians['sequential'] / medians['population'],
      'compile_seconds': compile_seconds,
      'max_abs_param_difference': difference}, indent=1))


if __name__ == '__main__':
  main()
