// A jax.ffi custom call: C[M, N] (fp32) = A[M, K] (bf16) x B[K, N] (bf16), row-major, by oneMKL's
// cblas_gemm_bf16bf16f32, which runs AMX tiles on CPUs that have them. Built and used by
// benchmarks/amx.py (build_ffi); not part of the package.
#include <mkl.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error GemmBf16(ffi::Buffer<ffi::BF16> a, ffi::Buffer<ffi::BF16> b,
                           ffi::ResultBuffer<ffi::F32> c) {
  auto a_dims = a.dimensions();
  auto b_dims = b.dimensions();
  if (a_dims.size() != 2 || b_dims.size() != 2 || a_dims[1] != b_dims[0]) {
    return ffi::Error::InvalidArgument("amx_gemm_bf16: expected A[M, K] and B[K, N]");
  }
  const MKL_INT m = a_dims[0], k = a_dims[1], n = b_dims[1];
  cblas_gemm_bf16bf16f32(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f,
                         reinterpret_cast<const MKL_BF16*>(a.typed_data()), k,
                         reinterpret_cast<const MKL_BF16*>(b.typed_data()), n, 0.0f,
                         c->typed_data(), n);
  return ffi::Error::Success();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(AmxGemmBf16, GemmBf16,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
