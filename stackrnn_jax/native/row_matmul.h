// The kernels' row matmuls (simple_rnn.cc, gated.cc): a few rows of out = add + v @ w,
// each register tile of sums held across the whole depth. One batch chunk's rows are a
// step's (rows, units) x (units, G*units) product: too small for a library GEMM's
// packing to pay, and run once per step, T times per call.

#pragma once

#include <algorithm>
#include <cstdint>

#include "common.h"

namespace stackrnn {

// A second product a row matmul may add, v (rows lv apart) times w (depth rows, lw
// apart): the recurrent term h W_h summed with the input term x W_x in one pass over
// the gates' row, whose sums stay in registers. depth 0: none.
template <typename T>
struct Term {
  const T* v = nullptr;
  int64_t lv = 0;
  const T* w = nullptr;
  int64_t lw = 0, depth = 0;
  // The same term from row r and column j0 on.
  Term rows_from(int64_t r, int64_t j0) const {
    return depth ? Term{v + r * lv, lv, w + j0, lw, depth} : Term{};
  }
};

// For rows r < R, columns [j0, n) in tiles of kV vectors: out[r, j] = add[r, j] + sum_{k
// < depth} v[r, k] w[k, j]; returns the first column not done (less than a tile left).
// Each tile's R x kV vectors of sums stay in registers across the k loop, so that each
// loaded tile of w serves R rows and each broadcast v[r, k] serves the tile's columns.
template <typename T, int R, int kV>
__attribute__((always_inline)) inline int64_t row_tiles(
    const T* __restrict v, int64_t lv, const T* __restrict w, int64_t lw, const T* add,
    int64_t la, T* out, int64_t lo, int64_t depth, const Term<T>& more, int64_t j0,
    int64_t n) {
  using V = vec_t<T>;
  constexpr int64_t kVector = sizeof(V) / sizeof(T), kTile = kV * kVector;
  for (; j0 + kTile <= n; j0 += kTile) {
    V acc[R][kV];
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < kV; ++q)
        acc[r][q] = add ? load_vector(add + r * la + j0 + q * kVector) : V{};
    for (int64_t k = 0; k < depth; ++k) {
      V wk[kV];
      for (int q = 0; q < kV; ++q) wk[q] = load_vector(w + k * lw + j0 + q * kVector);
      for (int r = 0; r < R; ++r) {
        const T a = v[r * lv + k];
        for (int q = 0; q < kV; ++q) acc[r][q] += a * wk[q];
      }
    }
    for (int64_t k = 0; k < more.depth; ++k) {
      V wk[kV];
      for (int q = 0; q < kV; ++q)
        wk[q] = load_vector(more.w + k * more.lw + j0 + q * kVector);
      for (int r = 0; r < R; ++r) {
        const T a = more.v[r * more.lv + k];
        for (int q = 0; q < kV; ++q) acc[r][q] += a * wk[q];
      }
    }
    for (int r = 0; r < R; ++r)
      for (int q = 0; q < kV; ++q)
        store_vector(out + r * lo + j0 + q * kVector, acc[r][q]);
  }
  return j0;
}

// For rows r < R: out[r, j] = add[r, j] + sum_{k < depth} v[r, k] w[k, j], j < n; v, w,
// add, out rows lv, lw, la, lo apart (la = 0: one row added to every row; add may be
// null, or out itself: out += v w). Columns in tiles of kVectors vectors (64 bytes each
// with AVX-512), then of one vector, then one by one. The forward's products use 4 rows
// by four vectors (16 sums in registers: the FMA units' latency is covered and a tile's
// loads are a quarter of its FMAs; two vectors, 8 sums, measured ~1.3x slower there);
// the backward's 8 rows by two (see kBackwardVectors). Not inlined (inlined into a
// loop whose rows share one array, the __restrict promises were lost and the tile left
// the registers: 2.5x slower). add and out are not __restrict: they may be one
// array, and out is written only after the k loop.
template <typename T, int R, int kVectors>
__attribute__((noinline)) void rows_times(const T* __restrict v, int64_t lv,
                                          const T* __restrict w, int64_t lw, const T* add,
                                          int64_t la, T* out, int64_t lo, int64_t depth,
                                          int64_t n, const Term<T>& more) {
  int64_t j0 = row_tiles<T, R, kVectors>(v, lv, w, lw, add, la, out, lo, depth, more, 0, n);
  j0 = row_tiles<T, R, 1>(v, lv, w, lw, add, la, out, lo, depth, more, j0, n);
  for (; j0 < n; ++j0) {
    for (int r = 0; r < R; ++r) {
      T acc = add ? add[r * la + j0] : T(0);
      for (int64_t k = 0; k < depth; ++k) acc += v[r * lv + k] * w[k * lw + j0];
      for (int64_t k = 0; k < more.depth; ++k)
        acc += more.v[r * more.lv + k] * more.w[k * more.lw + j0];
      out[r * lo + j0] = acc;
    }
  }
}

// rows_times over `rows` rows in as few tiles of at most kRows rows as cover them, of
// sizes as equal as can be: 16 rows in 6-row tiles go as 6, 5, 5 (10 or more sums in
// registers each), not 6, 6, 4 (the 4-row tile's 8 sums, the FMAs' latency uncovered,
// took a third of the product's time for a quarter of its rows). In panels of columns,
// each panel over all the rows before the next, so that the panel's block of w (depth x
// 256 bytes) stays in L1 across the rows (a whole W of 64 units x 4 gates, 64 KB, does
// not fit in it: row-major, rows_times re-read W from L2 for every tile). kVectors and
// kRows: see rows_times.
// With AVX2's 16 registers, 6 rows by two vectors (12 sums, as add_transposed_products):
// in a single-thread microbenchmark of a 16-row chunk's LSTM step (2-core AMD EPYC),
// 4 rows ran at 23 GFLOP/s and 6 at 36-42.
template <typename T, int kVectors = kForwardVectors, int kRows = kRegisters >= 32 ? 4 : 6>
void block_times(int64_t rows, const T* v, int64_t lv, const T* w, int64_t lw, const T* add,
                 int64_t la, T* out, int64_t lo, int64_t depth, int64_t n,
                 const Term<T>& more = Term<T>{}) {
  constexpr int64_t kPanel = 256 / sizeof(T);
  const int64_t tiles = (rows + kRows - 1) / kRows;
  for (int64_t j0 = 0; j0 < n; j0 += kPanel) {
    const int64_t width = std::min(kPanel, n - j0);
    const T* plus = add ? add + j0 : nullptr;
    for (int64_t i = 0, r = 0; i < tiles; ++i) {
      const int64_t next = rows * (i + 1) / tiles;
      by_rows<kRows>(static_cast<int>(next - r), [&](auto R) {
        rows_times<T, decltype(R)::value, kVectors>(v + r * lv, lv, w + j0, lw,
                                                    plus ? plus + r * la : nullptr, la,
                                                    out + r * lo + j0, lo, depth, width,
                                                    more.rows_from(r, j0));
      });
      r = next;
    }
  }
}

}  // namespace stackrnn
