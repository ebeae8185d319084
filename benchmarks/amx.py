"""Does anything in XLA:CPU reach AMX for a bf16 matmul? Every XLA flag that could, measured.

  python -m benchmarks.amx [--threads 2] [--rounds 1] [--variants default,onednn,...] [--ffi]

This CPU has AMX (``amx_bf16``, ``amx_tile``): PyTorch's bf16 matmul runs through oneDNN's AMX
kernels (``brg_matmul:avx10_1_512_amx``) at about 8x its fp32 rate. The question is whether JAX
can get there. A matmul of ``[M, K] x [K, N]`` is ``2 M K N`` FLOPs; two shapes matter:

- ``dense``: 2048 x 2048 x 2048, the machine's reference rate (``side_by_side.matmul_rates``).
- ``proj``: ``[128, 270, 256] x [256, 768]`` (= ``[34560, 256] x [256, 768]``), a transformer's
  QKV projection at batch 128, 3 x 90 tokens, hidden 256 (the Strategist's seed size).

Each variant is one child process (XLA flags are read once per process), run through
``benchmarks.side_by_side.alternate`` on the same pinned CPUs. A child reports GFLOP/s (best of 3
runs of ``--repeats`` calls), and two pieces of evidence of which kernel ran:

- the optimised HLO that ``--xla_dump_to`` writes (``*after_optimizations.txt``): whether the dot
  stayed a plain ``dot`` (XLA's Eigen/XNNPACK dot thunk) or became a oneDNN / XNN / YNN fusion or
  custom call;
- ``ONEDNN_VERBOSE=1``: oneDNN prints one line per primitive execution naming the ISA of the
  kernel (``...amx...``). The verbose lines are captured from file descriptor 1 and summarised.

Variants (``--variants``, comma-separated names from ``VARIANTS``): XLA flags that jaxlib 0.10.2
knows (``XLA_FLAGS=--help``), ``ONEDNN_MAX_CPU_ISA``, and the custom calls:

- ``torch``: torch alone (the reference rate, and which oneDNN kernel it picks);
- ``callback``: ``jax.pure_callback`` into ``torch.matmul``, zero-copy both ways (bf16 arrays are
  viewed as int16 into torch, and back), with a ``custom_vjp`` whose backward pass makes two more
  callbacks; measured forward and forward+backward against XLA's own bf16 matmul in the same
  process;
- ``ffi`` (with ``--ffi``): a ``jax.ffi`` custom call into oneMKL's ``cblas_gemm_bf16bf16f32`` (AMX
  on this CPU), built by ``benchmarks/amx_ffi.cc`` (see ``build_ffi``).

Prints a table: path, dtype, shape, GFLOP/s, fraction of torch's bf16 rate on the same shape.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import glob
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import side_by_side

DENSE = (2048, 2048, 2048)
PROJECTION = (128, 270, 256, 768)  # batch, tokens, in, out

# name: (XLA_FLAGS, extra environment)
NO_YNN = '--xla_cpu_experimental_ynn_fusion_type=reduce'  # drop "dot" from YNNPACK's fusions
VARIANTS = {
    'default': ('', {}),
    'ynn-off': (NO_YNN, {}),
    'onednn': ('--xla_cpu_use_onednn=true', {}),
    'onednn+ynn-off': (f'--xla_cpu_use_onednn=true {NO_YNN}', {}),
    'onednn-custom-call+ynn-off': (
        f'--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true {NO_YNN}', {}),
    'onednn-fusion-dot+ynn-off': (f'--xla_cpu_experimental_onednn_fusion_type=dot {NO_YNN}', {}),
    'onednn+ynn-off+isa-amx': (f'--xla_cpu_use_onednn=true {NO_YNN}',
                               {'ONEDNN_MAX_CPU_ISA': 'AVX512_CORE_AMX'}),
    'xnn-fusion-dot+ynn-off': (f'--xla_cpu_experimental_xnn_fusion_type=dot {NO_YNN}', {}),
    'xnn-graph-greedy': ('--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
                         {}),
    'no-xnnpack': ('--xla_cpu_use_xnnpack=false', {}),
    'max-isa-amx': ('--xla_cpu_max_isa=AMX', {}),
    'fast-math': ('--xla_cpu_enable_fast_math=true', {}),
    'torch': (None, {}),
    'callback': (None, {}),
    'ffi': (None, {}),
}
DEFAULT_VARIANTS = [name for name in VARIANTS if name != 'ffi']
FFI_SOURCE = pathlib.Path(__file__).with_name('amx_ffi.cc')
FFI_LIBRARY = pathlib.Path(tempfile.gettempdir()) / 'amx_ffi' / 'libamx_ffi.so'
MKL_ROOT = os.environ.get('MKL_ROOT', '/tmp/mklpkg')  # lib/ and include/ of the mkl wheels


def flops(shape: tuple[int, ...]) -> float:
  if len(shape) == 3:
    m, k, n = shape
    return 2.0 * m * k * n
  batch, tokens, k, n = shape
  return 2.0 * batch * tokens * k * n


def best_rate(function, shape, repeats: int) -> float:
  """GFLOP/s of ``function()`` (which must block), best of 3 runs of ``repeats`` calls."""
  function()
  best = float('inf')
  for _ in range(3):
    start = time.perf_counter()
    for _ in range(repeats):
      function()
    best = min(best, time.perf_counter() - start)
  return flops(shape) * repeats / best / 1e9


@contextlib.contextmanager
def captured_stdout(sink: list[str]):
  """Captures what C code (oneDNN's verbose printf) writes to file descriptor 1."""
  libc = ctypes.CDLL(None)
  sys.stdout.flush()
  libc.fflush(None)
  saved = os.dup(1)
  with tempfile.TemporaryFile(mode='w+b') as buffer:
    os.dup2(buffer.fileno(), 1)
    try:
      yield
    finally:
      libc.fflush(None)
      os.dup2(saved, 1)
      os.close(saved)
      buffer.seek(0)
      sink.extend(buffer.read().decode(errors='replace').splitlines())


def onednn_kernels(lines: list[str]) -> list[str]:
  """Distinct ``primitive kind:implementation`` pairs of oneDNN's executed primitives."""
  kernels = set()
  for line in lines:
    fields = line.split(',')
    if line.startswith('onednn_verbose') and 'exec' in fields and len(fields) > 6:
      at = fields.index('exec')
      source = fields[at + 5].split(' ')[0].split('::')[0] if len(fields) > at + 5 else ''
      kernels.add(f'{fields[at + 2]}:{fields[at + 3] or "-"}:{source}')
  return sorted(kernels)


def hlo_summary(dump_dir: str, module: str) -> str:
  """What the optimised HLO of ``jit_<module>`` does with the dot."""
  files = sorted(glob.glob(os.path.join(dump_dir, f'*jit_{module}*after_optimizations.txt')))
  if not files:
    return 'no dump'
  text = pathlib.Path(files[-1]).read_text()
  found = set()
  for target in re.findall(r'custom_call_target="([^"]+)"', text):
    found.add(f'custom-call {target}')
  for kind in re.findall(r'"kind":"([^"]+)"', text):
    if 'onednn' in kind.lower() or 'xnn' in kind.lower() or 'ynn' in kind.lower():
      found.add(f'fusion {kind}')
  for name in re.findall(r'fusion_kind\s*=\s*"?([\w_]+)', text):
    found.add(f'fusion {name}')
  for dot_type in re.findall(r'=\s*(\w+)\[[\d,]*\]\{[\d,]*\}\s+dot\(', text):
    found.add(f'{dot_type} dot')
  if re.search(r'ROOT %convert[.\d]* = f32\[', text):
    found.add('bf16->f32 converts')
  return ', '.join(sorted(found)) or 'other'


# --------------------------------------------------------------------------- children


def _jax_inputs(jnp, dtype):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  m, k, n = DENSE
  a = jnp.asarray(rng.standard_normal((m, k)), dtype)
  b = jnp.asarray(rng.standard_normal((k, n)), dtype)
  batch, tokens, d_in, d_out = PROJECTION
  x = jnp.asarray(rng.standard_normal((batch, tokens, d_in)), dtype)
  w = jnp.asarray(rng.standard_normal((d_in, d_out)) / 16, dtype)
  return a, b, x, w


def xla_child(repeats: int) -> None:
  """One XLA variant: the flags are already in XLA_FLAGS."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def dense_bf16(a, b):
    return a @ b

  def dense_f32(a, b):
    return a @ b

  def proj_bf16(x, w):
    return x @ w

  result, lines = {}, []
  with captured_stdout(lines):
    for dtype, dense in (('bfloat16', dense_bf16), ('float32', dense_f32)):
      a, b, x, w = _jax_inputs(jnp, getattr(jnp, dtype))
      compiled = jax.jit(dense)
      result[f'dense_{dtype}'] = best_rate(lambda: compiled(a, b).block_until_ready(), DENSE,
                                           repeats)
    a, b, x, w = _jax_inputs(jnp, jnp.bfloat16)
    compiled = jax.jit(proj_bf16)
    result['proj_bfloat16'] = best_rate(lambda: compiled(x, w).block_until_ready(), PROJECTION,
                                        repeats)
  dump = os.environ['AMX_DUMP_DIR']
  result['hlo_dense_bfloat16'] = hlo_summary(dump, 'dense_bf16')
  result['hlo_dense_float32'] = hlo_summary(dump, 'dense_f32')
  result['hlo_proj_bfloat16'] = hlo_summary(dump, 'proj_bf16')
  result['onednn_kernels'] = onednn_kernels(lines)
  side_by_side.emit(result)


def torch_child(repeats: int) -> None:
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(int(os.environ['BENCH_THREADS']))
  result, lines = {}, []
  batch, tokens, d_in, d_out = PROJECTION
  with captured_stdout(lines), torch.no_grad():
    for dtype in ('bfloat16', 'float32'):
      a = torch.randn(DENSE[:2], dtype=getattr(torch, dtype))
      b = torch.randn(DENSE[1:], dtype=getattr(torch, dtype))
      result[f'dense_{dtype}'] = best_rate(lambda: a @ b, DENSE, repeats)
    x = torch.randn((batch, tokens, d_in), dtype=torch.bfloat16)
    w = torch.randn((d_in, d_out), dtype=torch.bfloat16)
    result['proj_bfloat16'] = best_rate(lambda: x @ w, PROJECTION, repeats)
  result['onednn_kernels'] = onednn_kernels(lines)
  result['torch'] = torch.__version__
  side_by_side.emit(result)


def torch_matmul(jax, jnp):
  """``x @ w`` for bf16 ``x [..., K]`` and ``w [K, N]`` computed by torch through
  ``jax.pure_callback``, differentiable (``custom_vjp``: dx = g wᵀ, dw = xᵀ g, two callbacks)."""
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top

  def to_torch(array):  # zero copy: numpy has no bf16 buffer protocol, view the bits as int16
    return torch.from_numpy(np.asarray(array).view(np.int16)).view(torch.bfloat16)

  def to_numpy(tensor):
    return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)

  def host_matmul(a, b, transpose_a, transpose_b):
    a, b = to_torch(a), to_torch(b)
    if transpose_a:  # [..., K] -> [K, rows] : xᵀ g over all leading axes
      a = a.reshape(-1, a.shape[-1]).T
    if transpose_b:
      b = b.T
    if transpose_a:
      b = b.reshape(-1, b.shape[-1])
    with torch.no_grad():
      return to_numpy(torch.matmul(a, b))

  def call(a, b, shape, transpose_a=False, transpose_b=False):
    return jax.pure_callback(
        lambda a, b: host_matmul(a, b, transpose_a, transpose_b),
        jax.ShapeDtypeStruct(shape, jnp.bfloat16), a, b, vmap_method='sequential')

  @jax.custom_vjp
  def matmul(x, w):
    return call(x, w, x.shape[:-1] + w.shape[-1:])

  def forward(x, w):
    return matmul(x, w), (x, w)

  def backward(residuals, g):
    x, w = residuals
    dx = call(g, w, x.shape, transpose_b=True)
    dw = call(x, g, w.shape, transpose_a=True)
    return dx, dw

  matmul.defvjp(forward, backward)
  return matmul


def _grad_rates(jax, jnp, matmul, x, w, repeats):
  """GFLOP/s of forward + backward (3 matmuls) of ``sum(matmul(x, w) * c)``."""
  c = jnp.ones(x.shape[:-1] + w.shape[-1:], jnp.bfloat16)
  step = jax.jit(jax.grad(lambda x, w: jnp.sum((matmul(x, w) * c).astype(jnp.float32)),
                          argnums=(0, 1)))
  return best_rate(lambda: jax.block_until_ready(step(x, w)), PROJECTION, repeats) * 3


def callback_child(repeats: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(int(os.environ['BENCH_THREADS']))
  matmul = torch_matmul(jax, jnp)
  a, b, x, w = _jax_inputs(jnp, jnp.bfloat16)
  result = {}
  # Correctness against XLA's own bf16 matmul (both round an fp32 accumulation to bf16).
  reference = np.asarray((x @ w).astype(jnp.float32))
  got = np.asarray(jax.jit(matmul)(x, w).astype(jnp.float32))
  result['proj_max_relative_error'] = float(np.max(np.abs(got - reference)) /
                                            np.max(np.abs(reference)))
  grads = jax.jit(jax.grad(lambda x, w: jnp.sum(matmul(x, w).astype(jnp.float32)), (0, 1)))(x, w)
  native = jax.jit(jax.grad(lambda x, w: jnp.sum((x @ w).astype(jnp.float32)), (0, 1)))(x, w)
  result['grad_max_relative_error'] = max(
      float(np.max(np.abs(np.asarray(g, np.float32) - np.asarray(n, np.float32))) /
            np.max(np.abs(np.asarray(n, np.float32)))) for g, n in zip(grads, native))
  dense = jax.jit(matmul)
  result['dense_bfloat16'] = best_rate(lambda: dense(a, b).block_until_ready(), DENSE, repeats)
  result['proj_bfloat16'] = best_rate(lambda: dense(x, w).block_until_ready(), PROJECTION, repeats)
  result['proj_grad_bfloat16'] = _grad_rates(jax, jnp, matmul, x, w, repeats)
  result['xla_proj_grad_bfloat16'] = _grad_rates(jax, jnp, lambda x, w: x @ w, x, w, repeats)
  # The callback's own cost: a tiny matmul is all overhead.
  small_a, small_b = a[:8, :8], b[:8, :8]
  start = time.perf_counter()
  for _ in range(200):
    dense(small_a, small_b).block_until_ready()
  result['callback_overhead_us'] = (time.perf_counter() - start) / 200 * 1e6
  side_by_side.emit(result)


def build_ffi() -> pathlib.Path:
  """Compiles benchmarks/amx_ffi.cc against jaxlib's FFI headers and oneMKL (pip ``mkl``,
  ``mkl-include``) unless built already."""
  import jax  # pylint: disable=g-import-not-at-top
  if FFI_LIBRARY.exists() and FFI_LIBRARY.stat().st_mtime > FFI_SOURCE.stat().st_mtime:
    return FFI_LIBRARY
  FFI_LIBRARY.parent.mkdir(parents=True, exist_ok=True)
  mkl_lib = os.path.join(MKL_ROOT, 'lib')
  command = ['g++', '-O2', '-w', '-std=c++17', '-shared', '-fPIC', f'-I{jax.ffi.include_dir()}',
             f'-I{os.path.join(MKL_ROOT, "include")}', str(FFI_SOURCE), '-o', str(FFI_LIBRARY),
             f'-L{mkl_lib}', '-l:libmkl_rt.so.3', f'-Wl,-rpath,{mkl_lib}']
  subprocess.run(command, check=True)
  return FFI_LIBRARY


def ffi_child(repeats: int) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  library = ctypes.CDLL(str(build_ffi()))
  jax.ffi.register_ffi_target('amx_gemm_bf16', jax.ffi.pycapsule(library.AmxGemmBf16), 'cpu')

  def matmul_f32(x, w):  # bf16 x bf16 -> f32 (as preferred_element_type=float32)
    rows = x.reshape(-1, x.shape[-1])
    out = jax.ffi.ffi_call('amx_gemm_bf16', jax.ShapeDtypeStruct(
        (rows.shape[0], w.shape[1]), jnp.float32))(rows, w)
    return out.reshape(x.shape[:-1] + w.shape[-1:])

  def matmul(x, w):
    return matmul_f32(x, w).astype(jnp.bfloat16)

  a, b, x, w = _jax_inputs(jnp, jnp.bfloat16)
  result, lines = {}, []
  compiled = jax.jit(matmul)
  with captured_stdout(lines):
    reference = np.asarray((x @ w).astype(jnp.float32))
    got = np.asarray(compiled(x, w).astype(jnp.float32))
    result['proj_max_relative_error'] = float(np.max(np.abs(got - reference)) /
                                              np.max(np.abs(reference)))
    result['dense_bfloat16'] = best_rate(lambda: compiled(a, b).block_until_ready(), DENSE,
                                         repeats)
    result['proj_bfloat16'] = best_rate(lambda: compiled(x, w).block_until_ready(), PROJECTION,
                                        repeats)
    f32_out = jax.jit(matmul_f32)
    result['proj_f32out'] = best_rate(lambda: f32_out(x, w).block_until_ready(), PROJECTION,
                                      repeats)
  verbose = [line[len('MKL_VERBOSE '):] for line in lines if line.startswith('MKL_VERBOSE')]
  calls = {re.sub(r',0x[0-9a-f]+', '', line.split(')')[0]) + ') ' + line.split()[-1]
           for line in verbose if line.startswith('GEMM')}
  isa = [line for line in verbose if 'oneMKL' in line or 'Intel(R)' in line][:1]
  result['mkl_verbose'] = isa + sorted(calls)
  side_by_side.emit(result)


# --------------------------------------------------------------------------- parent

ROWS = (('dense_bfloat16', 'bfloat16', '2048x2048x2048'),
        ('dense_float32', 'float32', '2048x2048x2048'),
        ('proj_bfloat16', 'bfloat16', '[128,270,256]x[256,768]'),
        ('proj_f32out', 'bf16->f32', '[128,270,256]x[256,768]'),
        ('proj_grad_bfloat16', 'bfloat16', 'same, fwd+bwd (3 matmuls)'),
        ('xla_proj_grad_bfloat16', 'bfloat16', 'same, fwd+bwd, XLA dot'))


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=1)
  parser.add_argument('--repeats', type=int, default=10)
  parser.add_argument('--variants', default=','.join(DEFAULT_VARIANTS))
  parser.add_argument('--ffi', action='store_true', help='also the jax.ffi oneMKL custom call')
  parser.add_argument('--child', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    side_by_side.apply_threads()
    {'torch': torch_child, 'callback': callback_child, 'ffi': ffi_child}.get(
        args.child, xla_child)(args.repeats)
    return

  names = [name.strip() for name in args.variants.split(',') if name.strip()]
  if args.ffi and 'ffi' not in names:
    names.append('ffi')
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    raise SystemExit(f'unknown variants {unknown}; choose from {sorted(VARIANTS)}')
  if 'ffi' in names:
    build_ffi()
  threads = len(side_by_side.cpu_list(args.threads))
  dump_root = tempfile.mkdtemp(prefix='amx_dump_')
  sides, environments = {}, {}
  for name in names:
    flags, extra = VARIANTS[name]
    sides[name] = ['-m', 'benchmarks.amx', '--child', name, '--repeats', str(args.repeats)]
    environment = dict(extra, ONEDNN_VERBOSE='1', MKL_VERBOSE='1' if name == 'ffi' else '0')
    if flags is not None:
      dump = os.path.join(dump_root, name)
      environment.update(AMX_DUMP_DIR=dump, XLA_FLAGS=f'{flags} --xla_dump_to={dump}'.strip())
    environments[name] = environment
  results = side_by_side.alternate(sides, args.rounds, threads, environments)

  reference = {key: side_by_side.median(results['torch'], key) for key, _, _ in ROWS[:3]
               if 'torch' in results}
  reference['proj_grad_bfloat16'] = reference.get('proj_bfloat16')
  reference['proj_f32out'] = reference.get('proj_bfloat16')
  reference['xla_proj_grad_bfloat16'] = reference.get('proj_bfloat16')
  print(f'\nbf16 matmul on {threads} threads, GFLOP/s (median of {args.rounds} round(s)); '
        'fraction = / torch bf16 on the same shape')
  print(f'{"path":28s} {"dtype":9s} {"shape":28s} {"GFLOP/s":>8s} {"fraction":>8s}  evidence')
  for name in names:
    flags, extra = VARIANTS[name]
    for key, dtype, shape in ROWS:
      if key not in results[name][0]:
        continue
      rate = side_by_side.median(results[name], key)
      fraction = rate / reference[key] if reference.get(key) else float('nan')
      evidence = results[name][0].get(f'hlo_{key}', '')
      if key.startswith('dense_bf') or key.startswith('proj_bf'):
        kernels = [k for k in results[name][0].get('onednn_kernels', []) if 'matmul' in k or
                   'gemm' in k or 'inner_product' in k]
        if kernels:
          evidence += ('; ' if evidence else '') + 'oneDNN ' + ' '.join(kernels)
      print(f'{name:28s} {dtype:9s} {shape:28s} {rate:8.0f} {fraction:8.2f}  {evidence}')
  for name in ('callback', 'ffi'):
    if name in results:
      first = results[name][0]
      extras = {k: v for k, v in first.items() if 'error' in k or 'overhead' in k}
      print(f'{name}: ' + ', '.join(f'{k} {v:.3g}' for k, v in extras.items()))
      for line in first.get('mkl_verbose', []):
        print(f'  MKL_VERBOSE {line}')
  print(f'\nHLO dumps: {dump_root}')


if __name__ == '__main__':
  main()
