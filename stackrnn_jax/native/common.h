// Pieces the kernels share (simple_rnn.cc, gated.cc): the vectorisable exp, tanh and
// sigmoid, the weight-gradient block sums, the split of batch rows over XLA's thread
// pool, and the float32/float64 dispatch.

#pragma once

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif
#if defined(__SSE__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace stackrnn {

namespace ffi = xla::ffi;

// The target's SIMD registers: their width in bytes and how many there are; the register
// tiles below and in gated.cc are sized from them. AVX-512 (what -march=native finds on
// the development CPU): 64 bytes x 32; AVX/AVX2: 32 x 16; AArch64: 16 x 32; else 16 x 16.
// Tiles of 64-byte vectors compiled for AVX2 left the registers and ran ~10x slower.
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64, kRegisters = 32;
#elif defined(__AVX__)
constexpr int kVectorBytes = 32, kRegisters = 16;
#elif defined(__aarch64__)
constexpr int kVectorBytes = 16, kRegisters = 32;
#else
constexpr int kVectorBytes = 16, kRegisters = 16;
#endif

// The forward's row matmuls keep 4 rows by this many vectors of sums in registers: four
// where there are 32 registers, two where there are 16 (16 sums would leave none for the
// operands).
constexpr int kForwardVectors = kRegisters >= 32 ? 4 : 2;

// A vector of T in one register (the GCC and Clang vector extension), for register tiles
// that must stay vectorised along their columns: left to the auto-vectoriser, a tile one
// vector wide was vectorised across its rows with shuffles and ran ~5x slower.
template <typename T>
struct Vector {
  typedef T type __attribute__((vector_size(kVectorBytes)));
};
template <typename T>
using vec_t = typename Vector<T>::type;

template <typename T>
inline vec_t<T> load_vector(const T* p) {
  vec_t<T> x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

template <typename T>
inline void store_vector(T* p, vec_t<T> x) {
  std::memcpy(p, &x, sizeof x);
}

// Each lane's x clamped to [lo, hi], a NaN passed through (as std::min(std::max(x, lo), hi)
// is for one value), in one vector max and min. GCC vectorised std::min/std::max in a
// loop as compares, an and and a blend each: the LSTM's gates, 5 rational tanh per
// value (two clamps each), took 1.4x as long as with these (single-thread microbenchmark
// of a 16-row step, AVX2, 2-core AMD EPYC). The x86 max(a, b) returns b where the lanes
// are unordered, hence max(lo, x) and min(hi, ...); NEON's return the NaN.
inline vec_t<float> clamp_of(vec_t<float> x, float lo, float hi) {
  using V = vec_t<float>;
  const V low = V{} + lo, high = V{} + hi;
#if defined(__AVX512F__)
  return (V)_mm512_min_ps((__m512)high, _mm512_max_ps((__m512)low, (__m512)x));
#elif defined(__AVX__)
  return (V)_mm256_min_ps((__m256)high, _mm256_max_ps((__m256)low, (__m256)x));
#elif defined(__SSE__)
  return (V)_mm_min_ps((__m128)high, _mm_max_ps((__m128)low, (__m128)x));
#elif defined(__aarch64__)
  return (V)vminq_f32((float32x4_t)high, vmaxq_f32((float32x4_t)low, (float32x4_t)x));
#else
  const V y = x < low ? low : x;
  return high < y ? high : y;
#endif
}

template <typename T>
inline T clamp_of(T x, T lo, T hi) {
  return std::min(std::max(x, lo), hi);
}

// e^x = 2^n e^r with |r| <= ln2/2 and a Taylor polynomial for e^r (to r^7 in float32,
// r^13 in float64: relative error below each type's resolution); x is clamped where the
// result would leave the type's normal range. Branch-free and without floor(), so that the
// loops over a row vectorise; std::exp and std::tanh are scalar and took ~8x longer here.
// On a target without AVX-512, GCC 12 vectorises these loops only with -fno-trapping-math
// (the clamps and the float-to-integer conversion "might trap"): native/__init__.py's FLAGS.
template <typename T> struct ExpConstants;
template <> struct ExpConstants<float> {
  using Bits = int32_t;
  static constexpr float kClamp = 80.0f, kTanhClamp = 9.0f, kRound = 12582912.0f;  // 1.5*2^23
  static constexpr float kLn2Hi = 0.693145752f, kLn2Lo = 1.42860677e-6f;
  static constexpr int kTerms = 7, kMantissa = 23, kBias = 127;
};
template <> struct ExpConstants<double> {
  using Bits = int64_t;
  static constexpr double kClamp = 700.0, kTanhClamp = 19.0, kRound = 6755399441055744.0;
  static constexpr double kLn2Hi = 0.6931471803691238, kLn2Lo = 1.9082149292705877e-10;
  static constexpr int kTerms = 13, kMantissa = 52, kBias = 1023;
};

// 1 / k! for k <= K, formed at compile time.
template <typename T, int K>
struct InverseFactorials {
  T of[K + 1] = {};
  constexpr InverseFactorials() {
    T f = T(1);
    for (int k = 0; k <= K; ++k) of[k] = f = k > 1 ? f / T(k) : f;
  }
};
template <typename T, int K>
constexpr InverseFactorials<T, K> kInverseFactorials{};

template <typename T>
inline T exp_of(T x) {
  using C = ExpConstants<T>;
  const T y = clamp_of(x, -C::kClamp, C::kClamp);
  const T n = (y * T(1.4426950408889634) + C::kRound) - C::kRound;  // round(y / ln 2)
  const T r = (y - n * C::kLn2Hi) - n * C::kLn2Lo;
  // sum r^k / k! by Horner's rule on the coefficients 1 / k!: one multiply-add per term
  // (the nested form 1 + p (r / k) cost a multiply more per term: GCC may not fold r / k
  // without -ffast-math).
  T p = kInverseFactorials<T, C::kTerms>.of[C::kTerms];
  for (int k = C::kTerms - 1; k >= 0; --k) p = p * r + kInverseFactorials<T, C::kTerms>.of[k];
  const typename C::Bits bits = (static_cast<typename C::Bits>(n) + C::kBias) << C::kMantissa;
  T scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// float32 tanh as x P(x^2) / Q(x^2) on |x| <= 9 (tanh(9) rounds to 1 in float32): a
// rational fit of degrees 4 and 4 in x^2 (scripts/fit_tanh.py writes these coefficients;
// absolute error ~3e-7 evaluated in float32), clamped to [-1, 1]. 10 multiply-adds and a
// division, against ~20 operations and a division for (e - 1) / (e + 1) through exp_of.
// V: float or a vector of float.
template <typename V>
inline V rational_tanh(V x) {
  const V y = clamp_of(x, -9.0f, 9.0f), s = y * y;
  const V p = (((1.31842288e-08f * s + 2.04718071e-05f) * s + 3.48657928e-03f) * s +
               1.33731946e-01f) * s + 9.99999881e-01f;
  const V q = (((7.70265785e-07f * s + 3.27138201e-04f) * s + 2.58419681e-02f) * s +
               4.67064917e-01f) * s + 1.0f;
  return clamp_of(y * p / q, -1.0f, 1.0f);
}

// tanh(x) = (e - 1) / (e + 1), e = e^(2x), in float64 (the rational fit above is float32's);
// x is clamped where tanh has saturated to 1 in the type. Absolute error ~1 ulp of 1 (the
// relative error of tiny |x| is larger, far below any tolerance the reference checks use).
template <typename T>
inline T tanh_of(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, vec_t<float>>) {
    return rational_tanh(x);
  } else {
    const T bound = ExpConstants<T>::kTanhClamp;
    const T e = exp_of(T(2) * clamp_of(x, -bound, bound));
    return (e - T(1)) / (e + T(1));
  }
}

// sigmoid(x) = (1 + tanh(x / 2)) / 2 in float32 (one rational tanh), 1 / (1 + e^-x) in float64.
template <typename T>
inline T sigmoid_of(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, vec_t<float>>) {
    return 0.5f + 0.5f * rational_tanh(0.5f * x);
  } else {
    return T(1) / (T(1) + exp_of(-x));
  }
}

// load_as<V>(p): the value at p (V = T) or the vector from p on (V = vec_t<T>); store_as
// writes either back.
template <typename V, typename T>
inline V load_as(const T* p) {
  if constexpr (std::is_same_v<V, T>) {
    return *p;
  } else {
    return load_vector(p);
  }
}

template <typename T, typename V>
inline void store_as(T* p, V x) {
  if constexpr (std::is_same_v<V, T>) {
    *p = x;
  } else {
    store_vector(p, x);
  }
}

// Calls body(j, V{}) for the columns j < n of a row: float32 a vector at a time (V =
// vec_t<float>, j a multiple of its width), then the rest one at a time (V = T); float64
// one at a time (its exp_of is written for single values; GCC vectorises those loops). An
// elementwise loop is so written once, as a generic lambda, for vectors and single values.
template <typename T, typename Body>
__attribute__((always_inline)) inline void by_columns(int64_t n, Body body) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    constexpr int64_t kVector = kVectorBytes / sizeof(T);
    for (; j + kVector <= n; j += kVector) body(j, vec_t<T>{});
  }
  for (; j < n; ++j) body(j, T{});
}

// The kI-row, kV-vector block of out at (i0, j0) += sum over segments s and rows r of
// a_s[r, i0 + i] d_s[r, j0 + j]; the block's sums stay in registers across all the rows.
template <typename T, int kI, int kV>
__attribute__((always_inline)) inline void add_transposed_tile(
    const T* const* __restrict a, int64_t lda, const T* const* __restrict d, int64_t ldd,
    int64_t segments, int64_t rows, T* __restrict out, int64_t ldo, int64_t i0, int64_t j0) {
  using V = vec_t<T>;
  constexpr int64_t kVector = sizeof(V) / sizeof(T);
  V acc[kI][kV];
  for (int i = 0; i < kI; ++i)
    for (int q = 0; q < kV; ++q) acc[i][q] = load_vector(out + (i0 + i) * ldo + j0 + q * kVector);
  for (int64_t s = 0; s < segments; ++s) {
    const T* __restrict as = a[s] + i0;
    const T* __restrict ds = d[s] + j0;
    for (int64_t r = 0; r < rows; ++r) {
      V dr[kV];
      for (int q = 0; q < kV; ++q) dr[q] = load_vector(ds + r * ldd + q * kVector);
      for (int i = 0; i < kI; ++i) {
        const T x = as[r * lda + i];
        for (int q = 0; q < kV; ++q) acc[i][q] += x * dr[q];
      }
    }
  }
  for (int i = 0; i < kI; ++i)
    for (int q = 0; q < kV; ++q) store_vector(out + (i0 + i) * ldo + j0 + q * kVector, acc[i][q]);
}

// Calls run(std::integral_constant<int, R>{}) for a row count 1 <= R <= kMax known only
// at run time: the register tiles take their row count as a template argument.
template <int kMax, typename Run>
__attribute__((always_inline)) inline void by_rows(int R, Run run) {
  if constexpr (kMax > 1) {
    if (R < kMax) return by_rows<kMax - 1>(R, run);
  }
  run(std::integral_constant<int, kMax>{});
}

// Rows [0, m) of out's columns [j0, j0 + kV vectors): as few blocks of at most kI rows as
// cover them, of sizes as equal as can be (32 rows in 6-row blocks: 5, 5, 6, 5, 5, 6; in
// blocks of 6 then single rows, the last two rows' one-row blocks ran a row's loads for
// two FMAs each).
template <typename T, int kI, int kV>
__attribute__((always_inline)) inline void add_transposed_column(
    const T* const* a, int64_t lda, const T* const* d, int64_t ldd, int64_t segments,
    int64_t rows, T* out, int64_t ldo, int64_t m, int64_t j0) {
  const int64_t blocks = (m + kI - 1) / kI;
  for (int64_t b = 0, i0 = 0; b < blocks; ++b) {
    const int64_t next = m * (b + 1) / blocks;
    by_rows<kI>(static_cast<int>(next - i0), [&](auto I) {
      add_transposed_tile<T, decltype(I)::value, kV>(a, lda, d, ldd, segments, rows, out, ldo,
                                                     i0, j0);
    });
    i0 = next;
  }
}

// out[i, j] (rows ldo apart) += sum over segments s and rows r of a_s[r, i] d_s[r, j]
// (a_s rows lda apart, d_s rows ldd apart), i < m, j < n: a weight gradient (H_prev^T dA
// or X^T dA) over a block of steps. Output tiles of 12 rows by two vectors (24 sums, of
// AVX-512's 32 registers; 6 rows, 12 sums, of AVX2's 16) stay in registers across the
// block's rows (add_transposed_column), then tiles of one vector, then single columns.
// Each row's 2 vector loads and 12 broadcasts serve 24 FMAs. In a single-thread microbenchmark of the
// gated backward's shapes (16 rows, 16-step blocks, 64 units, 256 or 192 gate columns)
// the sums ran ~1.7x faster than with the 4-row tiles before (8 sums: the FMAs' latency
// uncovered, a load per FMA and a half); 8 rows by 3 vectors was as fast at 192 columns
// but slower at 256 (its one-vector tail). With AVX2 (a 2-core AMD EPYC), 6-row tiles
// with 6-row backward_times tiles (gated.cc) took the 2x64 stacks' gradient from ~90 to
// ~75 ms (GRU) and ~140 to ~110 ms (LSTM) at batch 32, T 500, against 4-row tiles.
template <typename T>
__attribute__((noinline)) void add_transposed_products(
    const T* const* __restrict a, int64_t lda, const T* const* __restrict d, int64_t ldd,
    int64_t segments, int64_t rows, T* __restrict out, int64_t ldo, int64_t m, int64_t n) {
  constexpr int64_t kVector = kVectorBytes / sizeof(T);
  constexpr int kI = kRegisters >= 32 ? 12 : 6;
  int64_t j0 = 0;
  for (; j0 + 2 * kVector <= n; j0 += 2 * kVector)
    add_transposed_column<T, kI, 2>(a, lda, d, ldd, segments, rows, out, ldo, m, j0);
  for (; j0 + kVector <= n; j0 += kVector)
    add_transposed_column<T, 4, 1>(a, lda, d, ldd, segments, rows, out, ldo, m, j0);
  for (; j0 < n; ++j0)
    for (int64_t i = 0; i < m; ++i) {
      T acc = out[i * ldo + j0];
      for (int64_t s = 0; s < segments; ++s)
        for (int64_t r = 0; r < rows; ++r) acc += a[s][r * lda + i] * d[s][r * ldd + j0];
      out[i * ldo + j0] = acc;
    }
}

// Asks Linux to back the 2 MB-aligned interior of an output buffer with transparent huge
// pages (a hint; nothing happens where THP is off or the call fails). XLA's CPU runtime
// allocates a train step's large buffers anew per call; with glibc's default settings
// they are fresh mmap pages, and a kernel's first writes to them page-faulted 4 KB at
// a time (the stash of a 64-unit LSTM layer at batch 32, T 500 is 20 MB: ~5,000 faults).
// Only whole 2 MB pages inside the buffer are marked, so no memory beyond it changes.
inline void prefer_huge_pages(void* data, size_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t end = (reinterpret_cast<uintptr_t>(data) + bytes) & ~(kHuge - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
#else
  (void)data;
  (void)bytes;
#endif
}

// Runs part(begin, end) on chunks of [0, rows), rows being independent recurrences: this
// thread and up to threads-1 tasks on XLA's intra-op pool each claim chunks until none is
// left. The caller then waits only for chunks already claimed, which are running: if the
// pool is busy (several devices, concurrent calls) and a task has not started, this
// thread runs its chunks itself, and the late task finds nothing left to claim. The claim
// counters live on the heap: a late task may start after this call has returned.
// Chunks of about 16 rows (at least one per thread, at least 4 rows each: the register
// block): on a shared machine a descheduled thread then holds back one small chunk, not
// half the batch, while the others claim the rest. Per row, a chunk of 8, 16 or 128 rows
// ran its steps at the same rate (the kernels' W panels stay in L1 either way).
template <typename Part>
void over_rows(ffi::ThreadPool pool, int64_t rows, Part part) {
  constexpr int64_t kChunkRows = 16;
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  const int64_t chunks = std::max<int64_t>(
      1, std::min<int64_t>(rows / 4, std::max<int64_t>(threads, rows / kChunkRows)));
  struct Claims {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto claims = std::make_shared<Claims>();
  auto work = [claims, chunks, rows, &part] {
    for (int64_t c; (c = claims->next.fetch_add(1)) < chunks;) {
      part(rows * c / chunks, rows * (c + 1) / chunks);
      claims->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t c = 1; c < std::min(chunks, threads); ++c) pool.Schedule([work] { work(); });
  work();
  while (claims->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Each chunk's partial sums (its rows' share of the weight gradients) in its own buffer,
// added together in the order of the chunks' first rows once all have finished. Floating-
// point addition is not associative: added into the totals in whichever order the chunks
// finished, the same train step's gradients differed from call to call (three chunks or
// more), and two training runs of one seed and config ended with different accuracies.
template <typename T>
class ChunkSums {
 public:
  explicit ChunkSums(int64_t size) : size_(size) {}
  // The zeroed buffer (size values) of the chunk whose first row is b0; any thread.
  T* part(int64_t b0) {
    std::lock_guard<std::mutex> hold(lock_);
    std::vector<T>& values = parts_[b0];  // a std::map's elements stay where they are
    values.assign(size_, T(0));
    return values.data();
  }
  // out[i] = the sum over the chunks, in row order, of their values [offset + i], i < count.
  void sum_into(int64_t offset, int64_t count, T* out) const {
    std::fill(out, out + count, T(0));
    for (const auto& chunk : parts_)
      for (int64_t i = 0; i < count; ++i) out[i] += chunk.second[offset + i];
  }

 private:
  int64_t size_;
  std::mutex lock_;
  std::map<int64_t, std::vector<T>> parts_;
};

// Calls run(T{}) with T the C++ type of a float32 or float64 buffer.
template <typename Run>
ffi::Error by_dtype(ffi::DataType dtype, const char* kernel, Run run) {
  if (dtype == ffi::DataType::F32) {
    run(float{});
  } else if (dtype == ffi::DataType::F64) {
    run(double{});
  } else {
    return ffi::Error::InvalidArgument(std::string("stackrnn ") + kernel +
                                       ": float32 or float64 only");
  }
  return ffi::Error::Success();
}

}  // namespace stackrnn
