// What every CUDA kernel of ddpm_pa_fast shares: element loads and stores in the accumulation type,
// deterministic warp and block sums, and the reduction of per-block partial sums.
//
// Torch-free on purpose (CUDA and the standard library only), as flash-attention's kernels are: the
// launchers take plain parameter structs with raw pointers and int64 sizes and strides, and the thin
// files in csrc/cuda/*.cu translate tensors into those structs. Every reduction here runs in a fixed
// order (no floating-point atomics), so a result depends only on the shapes and the grid, never on
// scheduling.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace ddpm_pa {
namespace cuda {

constexpr int kThreadsPerBlock = 256;
constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;
// Shared memory a block stages its tile in: under the 48 KiB every architecture gives by default.
constexpr int64_t kTileBytes = 40 * 1024;
// Cap on the grid of the reduction kernels: each block loops over its share of tiles, so that the
// per-block partial buffers stay small. It depends on nothing but this constant, so results are
// bit-identical from one GPU to the next.
constexpr int64_t kMaxReductionBlocks = 1024;

__host__ __device__ __forceinline__ int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Elementwise grids: enough blocks of kThreadsPerBlock threads, each thread looping with a grid
// stride, so any int64 size runs without overflowing gridDim.
inline unsigned int elementwise_blocks(int64_t numel) {
  const int64_t blocks = ceil_div(numel, kThreadsPerBlock);
  const int64_t max_blocks = int64_t(1) << 20;
  return static_cast<unsigned int>(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

// Tiles over the flattened feature dimension: every block stages `values_per_column` accumulation-type
// values per column for each of the batch's samples in shared memory. Columns per tile: as many as fit
// in kTileBytes, at most kMaxTileColumns; 0 when not even one column fits (the batch is too large).
constexpr int64_t kMaxTileColumns = 256;

inline int64_t tile_columns(int64_t batch, int64_t values_per_column, int64_t acc_bytes) {
  const int64_t fit = kTileBytes / (batch * values_per_column * acc_bytes);
  return fit < kMaxTileColumns ? fit : kMaxTileColumns;
}

// Grid of a tiled reduction: one block per tile up to kMaxReductionBlocks, each looping over tiles.
inline unsigned int reduction_blocks(int64_t num_tiles) {
  return static_cast<unsigned int>(num_tiles < kMaxReductionBlocks ? (num_tiles < 1 ? 1 : num_tiles)
                                                                   : kMaxReductionBlocks);
}

// The block's dynamic shared memory as an array of T. (A templated `extern __shared__ T[]` would
// declare one symbol with several types.)
template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
  extern __shared__ __align__(16) unsigned char ddpm_pa_shared_bytes[];
  return reinterpret_cast<T*>(ddpm_pa_shared_bytes);
}

// ---------------------------------------------------------------------------------------------
// Loads and stores between the storage type and the accumulation type. torch builds extensions with
// __CUDA_NO_HALF_CONVERSIONS__ and __CUDA_NO_BFLOAT16_CONVERSIONS__, so the conversions are explicit.

// The value at row parity r and column parity c (0 or 1) of a 2x2 block (a b / c d). Selects: an
// array indexed by parity would live in local memory (the built kernels showed 16-32 bytes of stack).
template <typename T>
__device__ __forceinline__ T at_parity(T a, T b, T c, T d, int64_t r, int64_t col) {
  return r == 0 ? (col == 0 ? a : b) : (col == 0 ? c : d);
}

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ double to_acc(double v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(double* p, double v) { *p = v; }
__device__ __forceinline__ void store(__half* p, float v) { *p = __float2half(v); }
__device__ __forceinline__ void store(__nv_bfloat16* p, float v) { *p = __float2bfloat16(v); }

// Offsets and strides of a 4-D (N, C, H, W) tensor in elements, so that channels-last and other
// strided inputs are read in place.
struct Strides4d {
  int64_t n, c, h, w;
};

__device__ __forceinline__ int64_t offset4d(const Strides4d& s, int64_t n, int64_t c, int64_t h, int64_t w) {
  return n * s.n + c * s.c + h * s.h + w * s.w;
}

// The (n, c, row, col) of element idx of a contiguous (N, C, height, width) tensor: how the elementwise
// kernels, which write their contiguous output in flat order, find the inputs of each element.
struct Nchw {
  int64_t n, c, row, col;
};

__device__ __forceinline__ Nchw unflatten_nchw(int64_t idx, int64_t c, int64_t height, int64_t width) {
  return {idx / (width * height * c), (idx / (width * height)) % c, (idx / width) % height, idx % width};
}

// ---------------------------------------------------------------------------------------------
// Deterministic sums: a fixed butterfly inside a warp, then a fixed tree over the block's warps.

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t v) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // complete in lane 0
}

// Sum over the block of each thread's v; the result is valid in thread 0. scratch holds
// kWarpsPerBlock values. Every thread of the block must call it.
template <typename acc_t>
__device__ acc_t block_sum(acc_t v, acc_t* scratch) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  acc_t total = acc_t(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < kWarpsPerBlock; ++w) total += scratch[w];
  }
  return total;
}

// Dot products of the rows of `num_rows` x `row_length` tiles in shared memory:
// partial[i * num_rows + j] += <tile[i], tile[j]>. One warp per (i, j) pair; the lanes stride the
// row, then a fixed butterfly sums them. partial is this block's slice of a global buffer that only
// this block touches, and each entry only one warp, so the read-modify-write needs no atomics.
template <typename acc_t>
__device__ void accumulate_tile_gram(const acc_t* tile, int64_t num_rows, int64_t row_length, acc_t* partial) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  for (int64_t pair = warp; pair < num_rows * num_rows; pair += kWarpsPerBlock) {
    const acc_t* row_i = tile + (pair / num_rows) * row_length;
    const acc_t* row_j = tile + (pair % num_rows) * row_length;
    acc_t dot = acc_t(0);
    for (int64_t k = lane; k < row_length; k += kWarpSize) dot += row_i[k] * row_j[k];
    dot = warp_sum(dot);
    if (lane == 0) partial[pair] += dot;
  }
}

// ---------------------------------------------------------------------------------------------
// The second stage of every reduction: out[k] = sum over blocks b, in order, of partials[b][k].

template <typename acc_t>
struct ReducePartialsParams {
  const acc_t* partials;   // (num_partials, partial_stride); entries [0, row_length) of each are summed
  acc_t* out;              // (row_length,)
  int64_t num_partials;
  int64_t partial_stride;
  int64_t row_length;
};

template <typename acc_t>
__global__ void reduce_partials_kernel(ReducePartialsParams<acc_t> p) {
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < p.row_length;
       k += int64_t(gridDim.x) * blockDim.x) {
    acc_t total = acc_t(0);
    for (int64_t b = 0; b < p.num_partials; ++b) total += p.partials[b * p.partial_stride + k];
    p.out[k] = total;
  }
}

template <typename acc_t>
void launch_reduce_partials(const ReducePartialsParams<acc_t>& p, cudaStream_t stream) {
  reduce_partials_kernel<acc_t><<<elementwise_blocks(p.row_length), kThreadsPerBlock, 0, stream>>>(p);
}

}  // namespace cuda
}  // namespace ddpm_pa
