// The CUDA version the extension's kernels were compiled with, for ddpm_pa_fast/_cuda_check.py.
//
// A plain C symbol rather than an op: it is build metadata, not maths, so it stays out of the
// ddpm_pa_fast op namespace (where every op has kernels, fake kernels and opcheck tests), needs no
// dispatch key, and Python reads it with ctypes from the already loaded library.
#include <cuda_runtime_api.h>

// CUDART_VERSION is 1000 * major + 10 * minor, e.g. 13000 for CUDA 13.0.
extern "C" __attribute__((visibility("default"))) int ddpm_pa_fast_cuda_build_version(void) {
  return CUDART_VERSION;
}
