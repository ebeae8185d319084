"""The Strategist's decision latency at batch 1 on one CPU thread: our cached step against the full
context and against HF transformers' DecisionTransformerModel ``get_action``, side by side.

  /work/bench-venv/bin/python -m benchmarks.strategist_latency [--rounds 3] [--calls 400]
      [--threads 1]

Seed sizes (configs/strategist.py default: context K = 90, hidden 256, 6 layers, 8 heads, state 45),
random weights (latency does not depend on them). One decision per call, each call timed alone
after a warm-up; p50 / p99 / mean in ms:

- ours, cached step (``ship/export/inference.py`` ``strategist_step``): (a) the ONNX file in
  onnxruntime (one intra-op thread, sequential), (b) the same function under ``jax.jit``. Each call
  is the next bar of an episode: the timestep cycles 0..K-1 and the cache the previous call
  returned is fed back, as a server does.
- ours, full context (``strategist``, what the ensemble served before): (c) ONNX and JAX over the
  K-step context, the decision read off the last step.
- peer (d): HF ``DecisionTransformerModel`` at the same sizes (state_dim 45, act_dim 4 = 3 one-hot
  actions + size, max_ep_len K, n_positions 3K; built as in benchmarks/strategist_vs_hf.py), in
  eval mode under ``torch.no_grad``, called with HF's ``get_action`` pattern (the example of the
  DecisionTransformer docs): the last K steps of the history, left-padded to ``max_length`` with an
  attention mask, a full forward, ``action_preds[0, -1]``. The history is full (K steps: a
  stream's steady state), so no padding.

The sides run in separate processes, alternating (benchmarks/side_by_side.py), pinned to the same
CPU with the same thread count. The parent prints medians over rounds and the median per-round
ratio peer/ours (how many times faster our decision is; target >= 20x for the cached step), of the
wall-time p50 and p99 and of the process CPU time per call (less sensitive than the wall time to
other jobs taking the CPU on a shared machine).

For another benchmark (benchmarks/serve.py): :func:`side_by_side_figures` runs the whole comparison
and returns the medians; :func:`our_latencies` and :func:`hf_decision_latency` measure one side in
the calling process.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import tempfile
from typing import Any, Callable

from benchmarks import side_by_side

TARGET_RATIO = 20.0
# Per path: wall-time percentiles and mean, and the process CPU time per call (on a shared machine
# closer to the quiet-machine latency of a one-thread call than the wall time: benchmarks/
# export_latency.py latency).
STATS = ('p50', 'p99', 'mean', 'cpu_mean')
OURS = ('onnx_step', 'jax_step', 'onnx_full', 'jax_full')
LABELS = {'onnx_step': 'ours, cached step, ONNX (onnxruntime)',
          'jax_step': 'ours, cached step, JAX jit',
          'onnx_full': 'ours, full context, ONNX (onnxruntime)',
          'jax_full': 'ours, full context, JAX jit',
          'hf_get_action': 'HF DecisionTransformerModel, full-context get_action'}


def _latency(call: Callable[[], Any], calls: int, warmup: int) -> dict[str, float]:
  from benchmarks.export_latency import latency  # pylint: disable=g-import-not-at-top
  return latency(call, calls, warmup)


def seed_inference(name: str) -> Any:
  """The seed-size Strategist's inference function ``name`` (``strategist`` or
  ``strategist_step``) with random params (PRNGKey(0): the same weights in every process)."""
  import jax  # pylint: disable=g-import-not-at-top
  from configs import strategist as strategist_config  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import inference as inference_lib  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.tasks import strategist  # pylint: disable=g-import-not-at-top
  config = strategist_config.get_config('')
  task = strategist.StrategistTask.from_config(config)
  params = task.init_params(jax.random.PRNGKey(0), strategist.example_batch(task))
  return inference_lib.MODELS[name].build(task, params, config, {})


def _onnx_file(inference: Any, directory: str | pathlib.Path) -> pathlib.Path:
  """``directory/<name>.onnx``, exported unless a previous round left it there."""
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(directory) / f'{inference.name}.onnx'
  if not path.is_file():
    onnx_lib.export_onnx(inference, path)
  return path


def our_latencies(calls: int, directory: str | pathlib.Path, threads: int = 1,
                  warmup: int = 30) -> dict[str, Any]:
  """p50/p99/mean ms per decision of the cached step and the full context, ONNX (``threads``
  onnxruntime threads) and JAX jit, at batch 1 in this process (module docstring)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from quantum_alpha_jax.ship.export import onnx as onnx_lib  # pylint: disable=g-import-not-at-top
  results: dict[str, Any] = {}
  step = seed_inference('strategist_step')
  steps = step.metadata['context_length']
  results['parameters'] = int(sum(np.size(x) for x in jax.tree.leaves(step.params)))
  tokens = step.random_inputs(steps, seed=1)[1:5]  # rtg, state, previous action and size per bar

  def stepper(run: Callable[..., Any], convert: Callable[[Any], Any]) -> Callable[[], Any]:
    bar = [0]
    cache = [convert(np.zeros((1, *step.inputs[-1].shape[1:]), np.float32))]
    inputs = [[convert(np.array([t], np.int32))] + [convert(x[t:t + 1]) for x in tokens]
              for t in range(steps)]

    def call() -> Any:
      t = bar[0] % steps
      outputs = run(*inputs[t], cache[0])
      cache[0] = outputs['next_cache']
      bar[0] += 1
      return outputs

    return call

  session = onnx_lib.session(_onnx_file(step, directory), threads)
  names, outputs = step.input_names, step.output_names
  onnx_run = lambda *arrays: dict(zip(outputs, session.run(outputs, dict(zip(names, arrays)))))
  results['onnx_step'] = _latency(stepper(onnx_run, np.asarray), calls, warmup)
  jitted = step.jitted
  jax_run = lambda *arrays: jax.block_until_ready(jitted(step.params, *arrays))
  results['jax_step'] = _latency(stepper(jax_run, jax.device_put), calls, warmup)

  full = seed_inference('strategist')
  context = full.random_inputs(1, seed=2)
  full_session = onnx_lib.session(_onnx_file(full, directory), threads)
  feeds = dict(zip(full.input_names, context))
  full_calls = max(calls // 4, 20)
  results['onnx_full'] = _latency(lambda: full_session.run(None, feeds), full_calls, 5)
  device_context = [jax.device_put(x) for x in context]
  full_jitted = full.jitted
  results['jax_full'] = _latency(
      lambda: jax.block_until_ready(full_jitted(full.params, *device_context)), full_calls, 5)
  results['calls'] = {'step': calls, 'full': full_calls}
  return results


def hf_decision_latency(calls: int, threads: int = 1, warmup: int = 5) -> dict[str, Any]:
  """p50/p99/mean ms of HF ``DecisionTransformerModel`` ``get_action`` over a full K-step history
  at batch 1 with ``threads`` torch threads, in this process (needs torch and transformers)."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from benchmarks.strategist_vs_hf import CONTEXT, hf_config  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  config = hf_config()
  config.max_length = CONTEXT
  model = transformers.DecisionTransformerModel(config).eval()

  def get_action(states, actions, rewards, returns_to_go, timesteps):
    """HF's get_action (DecisionTransformer docs example), unchanged but for the model argument."""
    states = states.reshape(1, -1, model.config.state_dim)
    actions = actions.reshape(1, -1, model.config.act_dim)
    returns_to_go = returns_to_go.reshape(1, -1, 1)
    timesteps = timesteps.reshape(1, -1)
    states = states[:, -model.config.max_length:]
    actions = actions[:, -model.config.max_length:]
    returns_to_go = returns_to_go[:, -model.config.max_length:]
    timesteps = timesteps[:, -model.config.max_length:]
    padding = model.config.max_length - states.shape[1]
    attention_mask = torch.cat([torch.zeros(padding), torch.ones(states.shape[1])])
    attention_mask = attention_mask.to(dtype=torch.long).reshape(1, -1)
    states = torch.cat([torch.zeros((1, padding, model.config.state_dim)), states], dim=1).float()
    actions = torch.cat([torch.zeros((1, padding, model.config.act_dim)), actions], dim=1).float()
    returns_to_go = torch.cat([torch.zeros((1, padding, 1)), returns_to_go], dim=1).float()
    timesteps = torch.cat([torch.zeros((1, padding), dtype=torch.long), timesteps], dim=1)
    _, action_preds, _ = model(states=states, actions=actions, rewards=rewards,
                               returns_to_go=returns_to_go, timesteps=timesteps,
                               attention_mask=attention_mask, return_dict=False)
    return action_preds[0, -1]

  generator = torch.Generator().manual_seed(0)
  history = {'states': torch.randn(CONTEXT, config.state_dim, generator=generator),
             'actions': torch.randn(CONTEXT, config.act_dim, generator=generator),
             'rewards': torch.zeros(CONTEXT),
             'returns_to_go': torch.randn(CONTEXT, 1, generator=generator),
             'timesteps': torch.arange(CONTEXT)}
  with torch.no_grad():
    figures = _latency(lambda: get_action(**history), calls, warmup)
  return {'hf_get_action': figures, 'parameters': sum(p.numel() for p in model.parameters()),
          'attention': model.config._attn_implementation}  # pylint: disable=protected-access


def _ours_child(args: argparse.Namespace) -> None:
  threads = side_by_side.apply_threads()
  result = our_latencies(args.calls, args.onnx_dir, threads)
  side_by_side.emit({f'{name}_{stat}': result[name][stat] for name in OURS for stat in STATS}
                    | {'parameters': result['parameters']})


def _peer_child(args: argparse.Namespace) -> None:
  threads = side_by_side.apply_threads()
  result = hf_decision_latency(max(args.calls // 4, 20), threads)
  side_by_side.emit({f'hf_get_action_{stat}': result['hf_get_action'][stat] for stat in STATS}
                    | {'parameters': result['parameters'], 'attention': result['attention']})


def side_by_side_figures(rounds: int = 3, calls: int = 400, threads: int = 1,
                         verbose: bool = True) -> dict[str, Any]:
  """Runs the alternating comparison (module docstring); returns per path ``{'p50', 'p99',
  'mean', 'cpu_mean'}`` medians over rounds (ms), ``ratio_p50`` / ``ratio_p99`` /
  ``ratio_cpu_mean`` (median per-round peer/ours for every path of ours), the parameter counts and
  the rounds."""
  import statistics  # pylint: disable=g-import-not-at-top
  count = len(side_by_side.cpu_list(threads))
  with tempfile.TemporaryDirectory(prefix='strategist_latency.') as directory:
    common = ['--calls', str(calls), '--onnx-dir', directory]
    module = ['-m', 'benchmarks.strategist_latency']
    results = side_by_side.alternate({'ours': module + ['--child', 'ours'] + common,
                                      'peer': module + ['--child', 'peer'] + common},
                                     rounds=rounds, threads=count, verbose=verbose)
  ours, peer = results['ours'], results['peer']
  figures: dict[str, Any] = {'threads': count, 'rounds': rounds, 'calls': calls,
                             'parameters': {'ours': ours[0]['parameters'],
                                            'peer': peer[0]['parameters']},
                             'peer_attention': peer[0]['attention']}
  for name, side in [(name, ours) for name in OURS] + [('hf_get_action', peer)]:
    figures[name] = {stat: side_by_side.median(side, f'{name}_{stat}') for stat in STATS}
  for stat in ('p50', 'p99', 'cpu_mean'):
    figures[f'ratio_{stat}'] = {
        name: float(statistics.median(p[f'hf_get_action_{stat}'] / o[f'{name}_{stat}']
                                      for o, p in zip(ours, peer)))
        for name in OURS}
  return figures


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--child', choices=('ours', 'peer'), default=None)
  parser.add_argument('--rounds', type=int, default=3)
  parser.add_argument('--calls', type=int, default=400,
                      help='timed cached-step calls per child (full-context paths: a quarter)')
  parser.add_argument('--threads', type=int, default=1)
  parser.add_argument('--onnx-dir', default='', help='(children) where the ONNX files are kept')
  args = parser.parse_args()
  if args.child == 'ours':
    return _ours_child(args)
  if args.child == 'peer':
    return _peer_child(args)
  print(f'Strategist decision latency, batch 1, {args.threads} thread(s), seed sizes, '
        f'{args.rounds} alternating rounds; load average {os.getloadavg()[0]:.1f}',
        file=sys.stderr, flush=True)
  figures = side_by_side_figures(args.rounds, args.calls, args.threads)
  print(f'\nStrategist decision at batch 1, {figures["threads"]} CPU thread(s), seed sizes '
        f'(K = 90, hidden 256, 6 layers, 8 heads; {figures["parameters"]["ours"]:,} parameters '
        f'ours, {figures["parameters"]["peer"]:,} HF), medians of {args.rounds} rounds; load '
        f'average after {os.getloadavg()[0]:.1f}\n')
  print('| path | p50 ms | p99 ms | mean ms | CPU ms per call | peer/ours p50 | peer/ours p99 '
        '| peer/ours CPU |')
  print('|---|---|---|---|---|---|---|---|')
  for name in OURS + ('hf_get_action',):
    entry = figures[name]
    ratios = (' | '.join(f'**{figures[f"ratio_{stat}"][name]:.1f}×**'
                         for stat in ('p50', 'p99', 'cpu_mean'))
              if name in OURS else '1× | 1× | 1×')
    print(f'| {LABELS[name]} | {entry["p50"]:.3f} | {entry["p99"]:.3f} | {entry["mean"]:.3f} | '
          f'{entry["cpu_mean"]:.3f} | {ratios} |')
  met = figures['ratio_p50']['onnx_step'] >= TARGET_RATIO
  print(f'\ntarget: the ONNX cached step >= {TARGET_RATIO:.0f}x the peer\'s decision (p50): '
        f'{"met" if met else "NOT met"} ({figures["ratio_p50"]["onnx_step"]:.1f}x); HF attention '
        f'{figures["peer_attention"]}')


if __name__ == '__main__':
  main()
