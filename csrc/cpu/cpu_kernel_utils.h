// What the CPU kernels share beyond the maths in ddpm_pa_math.h: argument parsing, the fixed
// partition of work that keeps reductions deterministic, and the blocked Gram / matrix-apply loops
// used by both the pairwise KL op and the fused loss.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "ddpm_pa_math.h"

#if defined(__GNUC__)
#define DDPM_PA_RESTRICT __restrict__
#else
#define DDPM_PA_RESTRICT
#endif

// OpenMP SIMD hints that also work inside AT_DISPATCH lambdas (a macro argument cannot hold #pragma).
// They only let the compiler vectorise; the code, and so the order of the sums, is fixed at build time.
#define DDPM_PA_PRAGMA(...) _Pragma(#__VA_ARGS__)
#define DDPM_PA_SIMD DDPM_PA_PRAGMA(omp simd)

// Instruction sets. The build targets baseline x86-64 (SSE2, no FMA) so the wheel runs anywhere. The
// hot loops are templates on their vector width in bytes, and DDPM_PA_DISPATCH_BY_ISA compiles each
// once per instruction set at that set's register width: x86-64-v4 (AVX-512, 64 bytes), x86-64-v3
// (AVX2 + FMA, 32) and the baseline (16). The best the CPU supports is picked once per process
// (selected_isa). One width for all sets is not an option: GCC keeps a 64-byte vector on the stack
// under AVX2, where the Gram and matrix-apply loops then ran 5x and 17x slower than at 32 bytes
// (measured on Zen 4, running the AVX2 copy). DDPM_PA_CPU_ISA=avx2 or =baseline in the environment
// selects a lower set, so the tests run every copy on one machine.
// x86-64 with GCC >= 12: the arch=x86-64-v* targets, and __builtin_cpu_supports for them.
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
#define DDPM_PA_X86_ISA_COPIES 1
#else
#define DDPM_PA_X86_ISA_COPIES 0
#endif
#if DDPM_PA_X86_ISA_COPIES
#define DDPM_PA_FOR_EACH_ISA(X, ...)                                    \
  X(__attribute__((target("arch=x86-64-v4"))), 64, avx512, __VA_ARGS__) \
  X(__attribute__((target("arch=x86-64-v3"))), 32, avx2, __VA_ARGS__)   \
  X(, 16, baseline, __VA_ARGS__)
#define DDPM_PA_ISA_VARIANTS(name) name##_avx512, name##_avx2, name##_baseline
#else
#define DDPM_PA_FOR_EACH_ISA(X, ...) X(, 16, baseline, __VA_ARGS__)
#define DDPM_PA_ISA_VARIANTS(name) name##_baseline, name##_baseline, name##_baseline
#endif

#define DDPM_PA_DEFINE_ISA_VARIANT(target, bytes, isa, ret, name, params, args, impl) \
  target static ret name##_##isa params { return impl<bytes> args; }

// Defines `ret name params`, which runs `impl<vector bytes> args` compiled for the selected
// instruction set (one static copy per set, name_avx512 / name_avx2 / name_baseline).
#define DDPM_PA_DISPATCH_BY_ISA(ret, name, params, args, impl)                               \
  DDPM_PA_FOR_EACH_ISA(DDPM_PA_DEFINE_ISA_VARIANT, ret, name, params, args, impl)            \
  ret name params {                                                                          \
    using Variant = ret(*) params;                                                           \
    static const Variant variant = ::ddpm_pa::cpu::select_isa_variant<Variant>(DDPM_PA_ISA_VARIANTS(name)); \
    return variant args;                                                                     \
  }

#if defined(__GNUC__)
#define DDPM_PA_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define DDPM_PA_ALWAYS_INLINE inline
#endif

namespace ddpm_pa {
namespace cpu {

enum class Isa { kAvx512, kAvx2, kBaseline };

// The instruction set the kernels run with: the best this CPU supports, or DDPM_PA_CPU_ISA's choice
// (avx512, avx2, baseline) when that is lower. Read once per process (csrc/cpu/cpu_isa.cpp).
Isa selected_isa();

template <typename Fn>
Fn select_isa_variant(Fn avx512, Fn avx2, Fn baseline) {
  switch (selected_isa()) {
    case Isa::kAvx512:
      return avx512;
    case Isa::kAvx2:
      return avx2;
    default:
      return baseline;
  }
}

// float for float32, float16 and bfloat16 inputs; double for float64.
template <typename scalar_t>
using acc_type = at::opmath_type<scalar_t>;

inline at::ScalarType accumulation_dtype(at::ScalarType dtype) {
  return dtype == at::kDouble ? at::kDouble : at::kFloat;
}

inline int reduction_from_name(const std::string& name, const char* arg_name, bool allow_none) {
  if (name == "mean") return kReduceMean;
  if (name == "batchmean") return kReduceBatchMean;
  if (name == "sum") return kReduceSum;
  if (name == "none" && allow_none) return kReduceNone;
  TORCH_CHECK(false, arg_name, " must be one of 'mean', 'batchmean', 'sum'", allow_none ? ", 'none'" : "",
              "; got '", name, "'");
}

// How haar_dwt2d extends an odd height or width by one: zeros, or a copy of the last sample
// ("symmetric" and "periodization" agree for the length-2 Haar filter; see reference._pad_to_even).
inline bool dwt_pads_with_zeros(const std::string& mode) {
  TORCH_CHECK(mode == "zero" || mode == "symmetric" || mode == "periodization",
              "mode must be one of 'zero', 'symmetric', 'periodization'; got '", mode, "'");
  return mode == "zero";
}

inline void check_floating(const at::Tensor& t, const char* name) {
  const at::ScalarType d = t.scalar_type();
  TORCH_CHECK(d == at::kFloat || d == at::kDouble || d == at::kHalf || d == at::kBFloat16, name,
              " must be float16, bfloat16, float32 or float64, got ", d);
}

inline void check_same_layout(const at::Tensor& reference, const char* ref_name, const at::Tensor& t,
                              const char* name) {
  TORCH_CHECK(t.sizes() == reference.sizes(), name, " must have the shape of ", ref_name, " ",
              reference.sizes(), ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == reference.scalar_type(), name, " must have the dtype of ", ref_name, " (",
              reference.scalar_type(), "), got ", t.scalar_type());
  TORCH_CHECK(t.device() == reference.device(), name, " must be on the device of ", ref_name, " (",
              reference.device(), "), got ", t.device());
}

// Work items [0, total) cut into at most kMaxChunks contiguous chunks of whole blocks. The cut depends
// on the problem size only, never on the thread count, and each chunk's partial sums are added in
// chunk order: a reduction gives the same bits with 1 thread or 64.
struct FixedPartition {
  static constexpr int64_t kMaxChunks = 64;
  int64_t total;
  int64_t chunk_size;
  int64_t count;

  FixedPartition(int64_t total_items, int64_t block_items) : total(total_items) {
    const int64_t blocks = std::max<int64_t>(1, (total + block_items - 1) / block_items);
    const int64_t blocks_per_chunk = (blocks + kMaxChunks - 1) / kMaxChunks;
    chunk_size = blocks_per_chunk * block_items;
    count = total == 0 ? 0 : (total + chunk_size - 1) / chunk_size;
  }
  int64_t begin(int64_t chunk) const { return chunk * chunk_size; }
  int64_t end(int64_t chunk) const { return std::min(total, (chunk + 1) * chunk_size); }
};

// Rows per task of the row-parallel elementwise kernels (HF map, DWT): about 32K values, large enough
// to amortise scheduling, small enough to balance. Rows are independent, so any split gives the same bits.
inline int64_t rows_per_task(int64_t row_values) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, row_values));
}

// Values per sample in one block of a Gram / matrix-apply pass: N rows of this many values of two
// tensors stay within a few hundred KB of cache. A function of N only, so the partition is fixed.
inline int64_t block_values_per_sample(int64_t n) {
  return std::min<int64_t>(4096, std::max<int64_t>(256, 32768 / std::max<int64_t>(1, n)));
}

// A thread's scratch for one blocked pass: `buffers` arrays of `rows` rows of up to `row_values` values,
// carved from one allocation. Rows and arrays start on staggered cache lines: separate allocations
// of this size are page-aligned, so rows walked side by side would sit at equal offsets modulo 4 KiB,
// share L1 sets and stall loads on unrelated stores (4K aliasing): the fused loss's forward spent
// most of its time in loads that waited behind its scratch stores.
template <typename T>
class StaggeredScratch {
 public:
  StaggeredScratch(int64_t buffers, int64_t rows, int64_t row_values)
      : stride_((row_values + kLine - 1) / kLine * kLine + kLine),
        buffer_values_(rows * stride_ + 3 * kLine),
        data_(new T[buffers * buffer_values_ + kLine]) {}  // uninitialised: every pass writes before it reads
  // Row stride, in values, of every array.
  int64_t stride() const { return stride_; }
  T* buffer(int64_t k) { return aligned_start() + k * buffer_values_; }

 private:
  static constexpr int64_t kLine = 64 / static_cast<int64_t>(sizeof(T));
  T* aligned_start() {
    const auto address = reinterpret_cast<std::uintptr_t>(data_.get());
    return data_.get() + ((64 - address % 64) % 64) / sizeof(T);
  }
  int64_t stride_;
  int64_t buffer_values_;
  std::unique_ptr<T[]> data_;
};

// Calls body(chunk, begin, end) for every chunk, in parallel. Chunks are independent.
template <typename Body>
void parallel_for_chunks(const FixedPartition& partition, const Body& body) {
  at::parallel_for(0, partition.count, 1, [&](int64_t first, int64_t last) {
    for (int64_t chunk = first; chunk < last; ++chunk) body(chunk, partition.begin(chunk), partition.end(chunk));
  });
}

// As above, with state made once per thread by make_state() and passed to each of its chunks as
// body(state, chunk, begin, end): scratch buffers are allocated per thread, not per chunk.
template <typename MakeState, typename Body>
void parallel_for_chunks(const FixedPartition& partition, const MakeState& make_state, const Body& body) {
  at::parallel_for(0, partition.count, 1, [&](int64_t first, int64_t last) {
    auto state = make_state();
    for (int64_t chunk = first; chunk < last; ++chunk)
      body(state, chunk, partition.begin(chunk), partition.end(chunk));
  });
}

// Adds per-chunk partial sums (count rows of width values each) in chunk order into out.
inline void sum_partials_in_order(const std::vector<double>& partials, int64_t count, int64_t width, double* out) {
  std::fill(out, out + width, 0.0);
  for (int64_t c = 0; c < count; ++c) {
    const double* p = partials.data() + c * width;
    for (int64_t k = 0; k < width; ++k) out[k] += p[k];
  }
}

// The Gram and matrix-apply loops below are register-blocked micro-kernels over 4 x 4 tiles, written
// with GCC's generic vectors of kBytes bytes, the register width of the instruction set each copy is
// compiled for (see DDPM_PA_DISPATCH_BY_ISA). A 4 x 4 Gram tile makes 16 multiply-adds per 8 vector
// loads (10 per 4 on the diagonal), where one dot at a time makes one per two loads: the tiles keep
// these loops on the FMA units rather than on the load ports.
template <typename T, int kBytes>
struct Vec {
  typedef T type __attribute__((vector_size(kBytes)));
  static constexpr int64_t lanes = kBytes / static_cast<int64_t>(sizeof(T));
};

// The lane type and lane count of a vector type.
template <typename V>
using lane_t = std::remove_cv_t<std::remove_reference_t<decltype(std::declval<V&>()[0])>>;
template <typename V>
constexpr int64_t lanes_of = static_cast<int64_t>(sizeof(V) / sizeof(lane_t<V>));

template <int kBytes, typename T>
DDPM_PA_ALWAYS_INLINE typename Vec<T, kBytes>::type load_vec(const T* p) {
  typename Vec<T, kBytes>::type v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// One vector of acc_t from scalar_t values (converted one by one for the half types).
template <int kBytes, typename acc_t, typename scalar_t>
DDPM_PA_ALWAYS_INLINE typename Vec<acc_t, kBytes>::type load_as_vec(const scalar_t* p) {
  if constexpr (std::is_same_v<acc_t, scalar_t>) {
    return load_vec<kBytes>(p);
  } else {
    typename Vec<acc_t, kBytes>::type v;
    for (int64_t l = 0; l < Vec<acc_t, kBytes>::lanes; ++l) v[l] = static_cast<acc_t>(p[l]);
    return v;
  }
}

template <typename T, typename V>
DDPM_PA_ALWAYS_INLINE void store_vec(T* p, V v) {
  static_assert(std::is_same_v<T, lane_t<V>>, "store_vec: pointer and vector lane types differ");
  std::memcpy(p, &v, sizeof(v));
}

// A pass that moves at least this many bytes (read + written) writes its output with streaming
// (non-temporal) stores: its data outruns the last-level cache, so the output goes to memory anyway,
// and a normal store first reads every line it writes (read for ownership). Below it, the pass's data
// stays in cache between calls and streaming would send the output to memory for nothing. Measured on
// Zen 4 (32 MiB L3), streaming and normal calls interleaved in one process, medians: the fused loss's
// backward at 8x3x256x256 (24 MiB moved) 1.12 -> 1.06 ms, public forward + backward 3.48 -> 3.21 ms
// (12x3x256x256: 2.56 -> 2.38 and 5.87 -> 5.69). Streaming was slower at 3x3x256x256 (9 MiB), and for
// the HF adjoint's and KL backward's outputs (8-13 MiB passes; 8x3x1024x1024 HF adjoint 34 -> 38-41 ms).
constexpr int64_t kStreamingPassBytes = int64_t{16} << 20;

// Stores vector v at p, which must be aligned to sizeof(V), bypassing the caches. Each width is one
// instruction set's copy (64: AVX-512, 32: AVX2, 16: SSE2), so the instruction is always available;
// inline assembly, because the intrinsics refuse to inline into the shared templates.
template <typename T, typename V>
DDPM_PA_ALWAYS_INLINE void stream_vec(T* p, V v) {
  static_assert(std::is_same_v<T, lane_t<V>>, "stream_vec: pointer and vector lane types differ");
#if defined(__x86_64__) && defined(__GNUC__)
  if constexpr (sizeof(V) == 64) {
    asm volatile("vmovntps %1, %0" : "=m"(*reinterpret_cast<V*>(p)) : "v"(v));
  } else if constexpr (sizeof(V) == 32) {
    asm volatile("vmovntps %1, %0" : "=m"(*reinterpret_cast<V*>(p)) : "x"(v));
  } else {
    asm volatile("movntps %1, %0" : "=m"(*reinterpret_cast<V*>(p)) : "x"(v));
  }
#else
  std::memcpy(p, &v, sizeof(v));
#endif
}

// Orders this thread's streaming stores before whatever it does next (they are weakly ordered):
// called once at the end of a kernel's work on a thread.
DDPM_PA_ALWAYS_INLINE void stream_fence() {
#if defined(__x86_64__) && defined(__GNUC__)
  asm volatile("sfence" ::: "memory");
#endif
}

// Stores a vector of acc_t as scalar_t values (converted one by one for the half types). With
// `streaming`, same-type stores to an address aligned for the vector bypass the caches
// (kStreamingPassBytes); the caller fences (stream_fence).
template <typename scalar_t, typename V>
DDPM_PA_ALWAYS_INLINE void store_vec_as(scalar_t* p, V v, bool streaming = false) {
  if constexpr (std::is_same_v<lane_t<V>, scalar_t>) {
    if (streaming && reinterpret_cast<std::uintptr_t>(p) % sizeof(V) == 0) {
      stream_vec(p, v);
    } else {
      store_vec(p, v);
    }
  } else {
    for (int64_t l = 0; l < lanes_of<V>; ++l) p[l] = static_cast<scalar_t>(v[l]);
  }
}

// Integer vector of the same lane count and width as V, for __builtin_shuffle masks.
template <typename V>
struct MaskOf {
  using index_t = std::conditional_t<sizeof(lane_t<V>) == 4, int32_t, int64_t>;
  typedef index_t type __attribute__((vector_size(sizeof(V))));
};

// Shuffles between a row's columns and the 2x2 blocks they belong to. even_lanes / odd_lanes: the
// even and the odd columns of two vectors of a row (v0, v1), the left and the right column of
// lanes_of<V> blocks. interleave(a, b, half): the columns of half 0 or 1 of those blocks again,
// (a[k], b[k], a[k + 1], b[k + 1], ...) from k = half * lanes / 2. The masks are built in loops the
// compiler folds into constants.
template <typename V>
DDPM_PA_ALWAYS_INLINE V even_lanes(V v0, V v1) {
  typename MaskOf<V>::type mask;
  for (int64_t l = 0; l < lanes_of<V>; ++l) mask[l] = static_cast<typename MaskOf<V>::index_t>(2 * l);
  return __builtin_shuffle(v0, v1, mask);
}
template <typename V>
DDPM_PA_ALWAYS_INLINE V odd_lanes(V v0, V v1) {
  typename MaskOf<V>::type mask;
  for (int64_t l = 0; l < lanes_of<V>; ++l) mask[l] = static_cast<typename MaskOf<V>::index_t>(2 * l + 1);
  return __builtin_shuffle(v0, v1, mask);
}
template <typename V>
DDPM_PA_ALWAYS_INLINE V interleave(V a, V b, int half) {
  typename MaskOf<V>::type mask;
  for (int64_t l = 0; l < lanes_of<V>; ++l)
    mask[l] = static_cast<typename MaskOf<V>::index_t>(half * lanes_of<V> / 2 + l / 2 + (l % 2) * lanes_of<V>);
  return __builtin_shuffle(a, b, mask);
}

// The high-frequency map and its adjoint on vectors, for row pairs walked 2 x lanes columns at a time
// (vectors t0, t1 of the top row, b0, b1 of the bottom one). The map is linear: a block's value is
// the sum of its four inputs times the adjoint's weights (high_frequency_adjoint of 1), so a lane-wise
// multiply-add of the two rows and one sum of neighbouring lanes give lanes_of<V> blocks, with no
// gather of the 2x2 inputs. (The sums run in another order than high_frequency's: equal to rounding.)
template <typename V>
struct HighFrequencyLanes {
  V top, bottom;  // per lane, the weight of a top-row and of a bottom-row value (left, right, ...)

  HighFrequencyLanes() {
    using T = lane_t<V>;
    T weight[2][2];
    high_frequency_adjoint<T>(T(1), weight[0][0], weight[0][1], weight[1][0], weight[1][1]);
    for (int64_t l = 0; l < lanes_of<V>; ++l) {
      top[l] = weight[0][l % 2];
      bottom[l] = weight[1][l % 2];
    }
  }
  // HF of the blocks of columns [0, 2 lanes): block j in lane j.
  DDPM_PA_ALWAYS_INLINE V map(V t0, V t1, V b0, V b1) const {
    const V p0 = top * t0 + bottom * b0, p1 = top * t1 + bottom * b1;
    return even_lanes(p0, p1) + odd_lanes(p0, p1);
  }
  // The weight of the value at (row, column) of a row pair in its block's HF value.
  DDPM_PA_ALWAYS_INLINE lane_t<V> weight(int row, int64_t column) const { return (row == 0 ? top : bottom)[column % 2]; }
  // The adjoint of map: the gradients g of the blocks spread over columns [0, lanes) (half 0) or
  // [lanes, 2 lanes) (half 1) of the top (row 0) or bottom (row 1) row.
  DDPM_PA_ALWAYS_INLINE V spread(V g, int row, int half) const {
    return (row == 0 ? top : bottom) * interleave(g, g, half);
  }
};

// Pairwise halving: log2(lanes) dependent adds rather than a chain of `lanes`.
template <typename V>
DDPM_PA_ALWAYS_INLINE lane_t<V> sum_lanes(V v) {
  lane_t<V> lanes[lanes_of<V>];
  std::memcpy(lanes, &v, sizeof(v));
  for (int64_t half = lanes_of<V> / 2; half > 0; half /= 2)
    for (int64_t l = 0; l < half; ++l) lanes[l] += lanes[l + half];
  return lanes[0];
}

// One halving step of sum_lanes for two vectors at once. x and y hold items (partial sums) of
// kSegment lanes each; the result holds twice as many items of kSegment / 2 lanes: x's item t,
// halves added, at item 2t and y's at item 2t + 1.
template <int64_t kSegment, typename V>
DDPM_PA_ALWAYS_INLINE V add_segment_halves(V x, V y) {
  constexpr int64_t kHalf = kSegment / 2;
  typename MaskOf<V>::type low, high;
  for (int64_t o = 0; o < lanes_of<V>; ++o) {
    const int64_t item = o / kHalf;
    low[o] = static_cast<typename MaskOf<V>::index_t>((item % 2 ? lanes_of<V> : 0) + item / 2 * kSegment + o % kHalf);
    high[o] = low[o] + kHalf;
  }
  return __builtin_shuffle(x, y, low) + __builtin_shuffle(x, y, high);
}

template <int64_t kSegment, int64_t kCount, typename V>
DDPM_PA_ALWAYS_INLINE void halve_segments(V* v) {
#pragma GCC unroll 8
  for (int64_t k = 0; k < kCount / 2; ++k) v[k] = add_segment_halves<kSegment>(v[2 * k], v[2 * k + 1]);
  if constexpr (kSegment > 2) halve_segments<kSegment / 2, kCount / 2>(v);
}

// out[k] = sum_lanes(v[k]) for 16 vectors, with the same pairwise halving and so the same bits, but
// each step adds two vectors' halves side by side: about 45 vector instructions for a tile's 16 sums
// instead of ~16 x 25, which had been a third of a Gram pass over 512-value blocks. Clobbers v.
template <typename V>
DDPM_PA_ALWAYS_INLINE void sum_lanes_of_16(V* v, lane_t<V> out[16]) {
  constexpr int64_t kLanes = lanes_of<V>;
  static_assert(kLanes >= 2 && kLanes <= 16, "sum_lanes_of_16: 2 to 16 lanes");
  halve_segments<kLanes, 16>(v);
  // 16 / kLanes vectors of one sum per lane remain. Step s moved vector k's item to position
  // 2 t + bit s of k, so sum k sits in vector k / kLanes at the bit reversal of k % kLanes.
  lane_t<V> sums[16];
  std::memcpy(sums, v, sizeof(sums));
  int steps = 0;
  while ((int64_t{1} << steps) < kLanes) ++steps;
  for (int k = 0; k < 16; ++k) {
    int reversed = 0;
    for (int s = 0; s < steps; ++s) reversed |= ((k >> s) & 1) << (steps - 1 - s);
    out[k] = sums[(k / kLanes) * kLanes + reversed];
  }
}

// Rows of a tile: row r of `rows` at rows + r * stride, rows past n - 1 repeated from the last one so
// a partial tile runs the same code (its extra dot products are computed and dropped).
template <typename acc_t>
DDPM_PA_ALWAYS_INLINE void tile_rows(const acc_t* rows, int64_t n, int64_t stride, int64_t first,
                                     const acc_t* out[4]) {
  for (int64_t r = 0; r < 4; ++r) out[r] = rows + std::min(first + r, n - 1) * stride;
}

// dots[p][q] = <a_p, b_q> over len values. On a diagonal tile (a == b) only q >= p is computed.
template <int kBytes, bool kDiagonal, typename acc_t>
DDPM_PA_ALWAYS_INLINE void gram_tile(const acc_t* const a[4], const acc_t* const b[4], int64_t len,
                                     acc_t dots[4][4]) {
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  vec acc[4][4] = {};
  int64_t e = 0;
  for (; e + kLanes <= len; e += kLanes) {
    vec va[4];
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) va[p] = load_vec<kBytes>(a[p] + e);
    // One b row at a time: 16 accumulators, 4 a rows and 1 b row stay in registers (GCC spilt
    // when all 8 rows were loaded up front).
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      const vec vb = kDiagonal ? va[q] : load_vec<kBytes>(b[q] + e);
#pragma GCC unroll 4
      for (int p = 0; p < (kDiagonal ? q + 1 : 4); ++p) acc[p][q] += va[p] * vb;
    }
  }
  acc_t sums[16];
  sum_lanes_of_16(&acc[0][0], sums);
  for (int p = 0; p < 4; ++p) {
    for (int q = kDiagonal ? p : 0; q < 4; ++q) {
      acc_t s = sums[4 * p + q];
      for (int64_t t = e; t < len; ++t) s += a[p][t] * b[q][t];
      dots[p][q] = s;
    }
  }
}

// gram[i][j] += <row_i, row_j> (j >= i only) for n rows of len values, row k at rows + k * stride.
// Each tile's dots run in acc_t over the block; the block's sums are added to the double gram.
template <int kBytes, typename acc_t>
DDPM_PA_ALWAYS_INLINE void add_block_gram_impl(const acc_t* rows, int64_t n, int64_t stride, int64_t len,
                                               double* gram) {
  acc_t dots[4][4];
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    const acc_t* a[4];
    tile_rows(rows, n, stride, i0, a);
    for (int64_t j0 = i0; j0 < n; j0 += 4) {
      if (j0 == i0) {
        gram_tile<kBytes, true>(a, a, len, dots);
      } else {
        const acc_t* b[4];
        tile_rows(rows, n, stride, j0, b);
        gram_tile<kBytes, false>(a, b, len, dots);
      }
      for (int64_t p = 0; p < 4 && i0 + p < n; ++p)
        for (int64_t q = j0 == i0 ? p : 0; q < 4 && j0 + q < n; ++q)
          gram[(i0 + p) * n + j0 + q] += static_cast<double>(dots[p][q]);
    }
  }
}

// The full symmetric Gram matrix from its accumulated upper triangle, in the output dtype.
template <typename acc_t>
void store_symmetric(const double* upper, int64_t n, acc_t* out) {
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = i; j < n; ++j) {
      out[i * n + j] = static_cast<acc_t>(upper[i * n + j]);
      out[j * n + i] = static_cast<acc_t>(upper[i * n + j]);
    }
  }
}

// out_p[e] = sum_k m_p[k] rows[k][e] for the 4 output rows of a tile and e in [e0, e0 + kCols vectors).
template <int kBytes, int kCols, typename acc_t>
DDPM_PA_ALWAYS_INLINE void apply_tile(const acc_t* const m[4], int64_t n, const acc_t* rows, int64_t stride,
                                      int64_t e0, acc_t* const out[4]) {
  using vec = typename Vec<acc_t, kBytes>::type;
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  vec acc[4][kCols] = {};
  for (int64_t k = 0; k < n; ++k) {
    vec v[kCols];
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) v[c] = load_vec<kBytes>(rows + k * stride + e0 + c * kLanes);
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p) {
      const acc_t w = m[p][k];
#pragma GCC unroll 4
      for (int c = 0; c < kCols; ++c) acc[p][c] += w * v[c];
    }
  }
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p)
#pragma GCC unroll 4
    for (int c = 0; c < kCols; ++c) store_vec(out[p] + e0 + c * kLanes, acc[p][c]);
}

// out[i][e] = sum_k m[i][k] rows[k][e] for n rows of len values; row k of rows at rows + k * stride,
// row i of out at out + i * out_stride. A partial tile of output rows repeats the last row (same
// values written twice). Tiles of 4 x 4 vectors: 16 accumulators per 4 loads and 4 broadcasts (4 x 2
// ran at two thirds of the speed on Zen 4 with AVX-512 and at 32 bytes with AVX2).
template <int kBytes, typename acc_t>
DDPM_PA_ALWAYS_INLINE void apply_matrix_block_impl(const acc_t* m, int64_t n, const acc_t* rows, int64_t stride,
                                                   int64_t len, acc_t* out, int64_t out_stride) {
  constexpr int64_t kLanes = Vec<acc_t, kBytes>::lanes;
  for (int64_t i0 = 0; i0 < n; i0 += 4) {
    const acc_t* m_rows[4];
    acc_t* out_rows[4];
    tile_rows(m, n, n, i0, m_rows);
    for (int64_t r = 0; r < 4; ++r) out_rows[r] = out + std::min(i0 + r, n - 1) * out_stride;
    int64_t e = 0;
    for (; e + 4 * kLanes <= len; e += 4 * kLanes) apply_tile<kBytes, 4>(m_rows, n, rows, stride, e, out_rows);
    for (; e + kLanes <= len; e += kLanes) apply_tile<kBytes, 1>(m_rows, n, rows, stride, e, out_rows);
    for (; e < len; ++e) {
      for (int64_t r = 0; r < 4; ++r) {
        acc_t s = acc_t(0);
        for (int64_t k = 0; k < n; ++k) s += m_rows[r][k] * rows[k * stride + e];
        out_rows[r][e] = s;
      }
    }
  }
}

// Per instruction set (csrc/cpu/blocked_linear_algebra_cpu.cpp).
void add_block_gram(const float* rows, int64_t n, int64_t stride, int64_t len, double* gram);
void add_block_gram(const double* rows, int64_t n, int64_t stride, int64_t len, double* gram);
void apply_matrix_block(const float* m, int64_t n, const float* rows, int64_t stride, int64_t len, float* out,
                        int64_t out_stride);
void apply_matrix_block(const double* m, int64_t n, const double* rows, int64_t stride, int64_t len, double* out,
                        int64_t out_stride);

// Per-row KL(P_src || P_ada) of the similarity softmaxes, from the two Gram matrices.
template <typename acc_t>
void similarity_kl_rows(const acc_t* gram_src, const acc_t* gram_ada, int64_t n, acc_t inv_tau, acc_t* row_kl) {
  std::vector<acc_t> lse(2 * n);
  similarity_logsumexps(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n);
  for (int64_t i = 0; i < n; ++i)
    row_kl[i] = similarity_kl_row(gram_src, gram_ada, n, i, inv_tau, lse.data(), lse.data() + n);
}

// M with d(sum_i row_weight[i] KL_i) / dF_ada = M @ F_ada.
template <typename acc_t>
std::vector<acc_t> similarity_kl_gradient(const acc_t* gram_src, const acc_t* gram_ada, int64_t n, acc_t inv_tau,
                                          const acc_t* row_weight) {
  std::vector<acc_t> lse(2 * n);
  std::vector<acc_t> m(n * n);
  similarity_logsumexps(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n);
  similarity_kl_grad_matrix(gram_src, gram_ada, n, inv_tau, lse.data(), lse.data() + n, row_weight, m.data());
  return m;
}

}  // namespace cpu
}  // namespace ddpm_pa
