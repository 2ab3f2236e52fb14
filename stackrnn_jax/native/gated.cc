// The LSTM and GRU recurrences as one CPU call per layer and direction (XLA FFI).
//
// As simple_rnn.cc: the batch rows are split into one chunk per thread of XLA's intra-op
// pool, each chunk running all T steps on its own. Each step forms the input term
// b_in + x_t W_x for its rows in the kernel (a register-blocked row matmul against
// W_x (inputs, G*units)), so no hoisted (time, batch, G*units) projection is written to
// memory and read back; then the G gates' recurrent term in one row matmul against
// W_h (units, G*units), then the gates elementwise (vectorised sigmoid and tanh).
// Inference of a whole unidirectional stack can run in one call (InferStack): each
// chunk's layers advance a step at a time together, the layer above reading the state
// the layer below has just formed, so only the top layer's states may be written out.
//
// cell 0, LSTM (gates i f c o):  z = b + x W_x + h W_h; i, f, o = sigmoid; g = act(z_c);
//   c_t = f c + i g; h_t = o act(c_t).
// cell 1, GRU reset_after (gates z r n):  xw = b_in + x W_x, u = h W_h + b_rec;
//   z = sigmoid(xw_z + u_z), r = sigmoid(xw_r + u_r), n = act(xw_n + r u_n).
// cell 2, GRU reset_before:  z, r from xw + h W_h[:, :2u]; n = act(xw_n + (r h) W_h[:, 2u:]).
// GRU: h_t = z h + (1 - z) n. cell 3: the SimpleRNN, inference only (h_t = act(z), z as
// the LSTM's with G = 1). Where mask[t, b] is false the carry is held (outputs are
// masked by the caller), as common.masked_step.
//
// Inference of a layer read only through its final state (the top of a classifier)
// writes that state alone (attribute sequences 0), not the (time, batch, u) states.
// Training forward also stores, per step and row, what the backward pass reads (the
// stash: (time, batch, S*units), flat): LSTM [i f g o] (S 4), GRU [z r n u_n] (after) or
// [z r n r*h] (before) (S 4); then the LSTM's c_t after every kCheckpointSteps-th step
// (time / kCheckpointSteps, batch, units), from which the backward recomputes the other
// steps' c_t a block at a time (c_t = f c_{t-1} + i g: two operations per value, against a
// fifth of the stash written, page-faulted in and read back).
// Backward, from the stash, per step in reverse: dX (the cotangent of the step's input
// term), the recurrent term's cotangent dU (= dX except GRU reset_after's candidate
// block, r * dn), dh <- dU W_h^T (+ the direct paths) and the input's gradient dxs =
// dX W_x^T; dW_h = H_prev^T dU, dW_x = X^T dX, db_in = sum dX and db_rec = sum dU (GRU
// reset_after) summed every few steps while their rows are in cache.
// dX and dU are never written out whole: a (time, batch, G*units) temporary less, which
// also keeps XLA's per-call temporaries under glibc's mmap limits (see allocator.py).
//
// Shapes: xs (time, batch, inputs); W_x (inputs, G*u); b_in, b_rec (G*u); W_h (u, G*u);
// h0, c0, c_last, dh, dc (batch, u) (GRU: c0 unused, c_last and dc0 zero); hs, dy (time,
// batch, u); mask (time, batch) bool. Row-major. activation: 0 tanh, 1 relu.

#include <vector>

#include "common.h"
#include "row_matmul.h"

namespace ffi = xla::ffi;

namespace {

using stackrnn::add_transposed_products;
using stackrnn::block_times;
using stackrnn::by_columns;
using stackrnn::by_dtype;
using stackrnn::load_as;
using stackrnn::over_rows;
using stackrnn::sigmoid_of;
using stackrnn::store_as;
using stackrnn::tanh_of;
using stackrnn::Term;

// kSimple: the SimpleRNN's inference (its training runs in simple_rnn.cc), here so that
// its input term is formed per step too.
enum Cell : int64_t { kLstm = 0, kGruAfter = 1, kGruBefore = 2, kSimple = 3 };

int64_t gates_of(int64_t cell) { return cell == kLstm ? 4 : cell == kSimple ? 1 : 3; }
int64_t stash_of(int64_t cell) { return cell == kSimple ? 1 : 4; }

// The LSTM's stash keeps c_t after steps K - 1, 2K - 1, ... (K = kCheckpointSteps); the
// backward recomputes a block of K steps' c_t at once into a (K, rows, units) buffer, which
// stays in L2 (64 KB for a 16-row chunk of 64 units). strategies/cpu_native.py's
// CHECKPOINT_STEPS is this number.
constexpr int64_t kCheckpointSteps = 16;

// The values in a layer's stash: S*u a row and step, then the LSTM's checkpoints.
int64_t stash_size(int64_t cell, int64_t time, int64_t batch, int64_t units) {
  const int64_t checkpoints = cell == kLstm ? time / kCheckpointSteps : 0;
  return (time * stash_of(cell) + checkpoints) * batch * units;
}

// V: a value or a vector of values (see by_columns).
template <int kAct, typename V>
inline V act(V x) {
  if constexpr (kAct == 0) return tanh_of(x);
  return x > V{} ? x : V{};
}

// act'(x) from y = act(x): tanh 1 - y^2, relu y > 0.
template <int kAct, typename V>
inline V act_grad(V y) {
  const V one = V{} + 1;
  if constexpr (kAct == 0) return one - y * y;
  return y > V{} ? one : V{};
}

// The gates of one row, elementwise, a vector of columns at a time (by_columns). Each its
// own function with __restrict arguments: inlined into the step loop, where the rows
// share arrays, GCC did not vectorise them (the step's elementwise work then took twice
// the time of its matmuls).

// SimpleRNN: h_t = act(z).
template <typename T, int kAct>
__attribute__((noinline)) void simple_output(const T* __restrict z, T* __restrict h, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    store_as(h + j, act<kAct>(load_as<decltype(like)>(z + j)));
  });
}

// The LSTM's c_t from its gates and c_{t-1}: the one expression of the forward pass and of
// the backward's recomputation (recompute_cells), so that both round alike.
template <typename V>
inline V next_cell(V i, V f, V gg, V cp) {
  return f * cp + i * gg;
}

// LSTM: z [i f g o] pre-activations in, activations out; c_t and h_t from c_{t-1}.
template <typename T, int kAct>
__attribute__((noinline)) void lstm_gates(T* __restrict z, const T* __restrict cp,
                                          T* __restrict c, T* __restrict h, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    const V i = sigmoid_of(load_as<V>(z + j)), f = sigmoid_of(load_as<V>(z + u + j));
    const V gg = act<kAct>(load_as<V>(z + 2 * u + j));
    const V o = sigmoid_of(load_as<V>(z + 3 * u + j));
    const V cn = next_cell(i, f, gg, load_as<V>(cp + j));
    store_as(z + j, i);
    store_as(z + u + j, f);
    store_as(z + 2 * u + j, gg);
    store_as(z + 3 * u + j, o);
    store_as(c + j, cn);
    store_as(h + j, o * act<kAct>(cn));
  });
}

// GRU reset_after: x [xw_z xw_r xw_n] in, [z r n u_n] out; rec = h W_h + b_rec.
template <typename T, int kAct>
__attribute__((noinline)) void gru_after_gates(T* __restrict x, const T* __restrict rec,
                                               const T* __restrict hp, T* __restrict h,
                                               int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    const V z = sigmoid_of(load_as<V>(x + j) + load_as<V>(rec + j));
    const V r = sigmoid_of(load_as<V>(x + u + j) + load_as<V>(rec + u + j));
    const V rec_n = load_as<V>(rec + 2 * u + j);
    const V n = act<kAct>(load_as<V>(x + 2 * u + j) + r * rec_n);
    store_as(x + j, z);
    store_as(x + u + j, r);
    store_as(x + 2 * u + j, n);
    store_as(x + 3 * u + j, rec_n);
    store_as(h + j, z * load_as<V>(hp + j) + (1 - z) * n);
  });
}

// GRU reset_before, before the candidate's matmul: z, r and r * h_{t-1} into x.
template <typename T>
__attribute__((noinline)) void gru_before_gates(T* __restrict x, const T* __restrict rec,
                                                const T* __restrict hp, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    const V z = sigmoid_of(load_as<V>(x + j) + load_as<V>(rec + j));
    const V r = sigmoid_of(load_as<V>(x + u + j) + load_as<V>(rec + u + j));
    store_as(x + j, z);
    store_as(x + u + j, r);
    store_as(x + 3 * u + j, r * load_as<V>(hp + j));
  });
}

// GRU reset_before, after it: x's candidate column holds xw_n + (r h) W_h[:, 2u:].
template <typename T, int kAct>
__attribute__((noinline)) void gru_before_output(T* __restrict x, const T* __restrict hp,
                                                 T* __restrict h, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    const V n = act<kAct>(load_as<V>(x + 2 * u + j)), z = load_as<V>(x + j);
    store_as(x + 2 * u + j, n);
    store_as(h + j, z * load_as<V>(hp + j) + (1 - z) * n);
  });
}

template <typename T>
struct Layer {
  int64_t time, batch, units, inputs, cell;
  const T *xs, *w_x, *b_in, *w_h, *b_rec, *h0, *c0;
  const bool* mask;
};

// Rows [b0, b1) of one layer's forward pass, a step at a time: hs, the final cell state
// (LSTM) and, when stash is not null, the stash. sequences false (inference of a layer
// read only through its final state, or a layer below another in the same call): hs is
// (batch, u), the last step's state only; the steps' states live in two running buffers,
// so no (time, batch, u) array is written (and, under glibc's default allocator,
// page-faulted in). The input rows of each step are handed in, so that a stack's layers
// can advance together (stack_rows: the layer below's state is the input).
template <typename T, int kAct>
class RowsForward {
 public:
  RowsForward(const Layer<T>& L, int64_t b0, int64_t b1, T* hs, T* stash, bool sequences)
      : L_(L), b0_(b0), rows_(b1 - b0), u_(L.units), g_(gates_of(L.cell) * L.units),
        s_(stash_of(L.cell) * L.units), hs_(hs), stash_(stash), sequences_(sequences),
        states_{std::vector<T>(sequences ? 0 : rows_ * u_),
                std::vector<T>(sequences ? 0 : rows_ * u_)},
        gates_(stash ? 0 : rows_ * s_), rec_(rows_ * g_),
        cells_{std::vector<T>(rows_ * u_), std::vector<T>(rows_ * u_)},
        checkpoints_(stash && L.cell == kLstm ? stash + L.time * L.batch * s_ : nullptr) {}

  // The state after step t of this chunk's rows (rows u apart either way).
  T* state(int64_t t) {
    return sequences_ ? hs_ + (t * L_.batch + b0_) * u_ : states_[t % 2].data();
  }

  // Step t; x: its input rows, lx apart.
  void step(int64_t t, const T* x, int64_t lx) {
    const int64_t u = u_, g = g_, s = s_, rows = rows_;
    const T* hp = t == 0 ? L_.h0 + b0_ * u : state(t - 1);
    T* h = state(t);
    T* st = stash_ ? stash_ + (t * L_.batch + b0_) * s : gates_.data();
    const bool* m = L_.mask + t * L_.batch + b0_;
    // The input term b_in + x_t W_x, into the stash's first G*u columns; the SimpleRNN's
    // and the LSTM's z = b_in + x_t W_x + h W_h in one pass.
    const bool one_pass = L_.cell == kSimple || L_.cell == kLstm;
    block_times(rows, x, lx, L_.w_x, g, L_.b_in, 0, st, s, L_.inputs, g,
                one_pass ? Term<T>{hp, u, L_.w_h, g, u} : Term<T>{});
    if (L_.cell == kSimple) {
      for (int64_t r = 0; r < rows; ++r) {
        if (m[r]) {
          simple_output<T, kAct>(st + r * s, h + r * u, u);
        } else {
          std::copy(hp + r * u, hp + (r + 1) * u, h + r * u);
        }
      }
    } else if (L_.cell == kLstm) {
      // c_{t-1} and c_t (rows u apart) in the two running buffers; the stash's checkpoints
      // take a copy every kCheckpointSteps steps.
      const T* cp = t == 0 ? L_.c0 + b0_ * u : cells_[(t - 1) % 2].data();
      T* c = cells_[t % 2].data();
      for (int64_t r = 0; r < rows; ++r) {
        if (m[r]) {
          lstm_gates<T, kAct>(st + r * s, cp + r * u, c + r * u, h + r * u, u);
        } else {  // the carry is held
          std::copy(hp + r * u, hp + (r + 1) * u, h + r * u);
          std::copy(cp + r * u, cp + (r + 1) * u, c + r * u);
        }
      }
      if (checkpoints_ && (t + 1) % kCheckpointSteps == 0)
        std::copy(c, c + rows * u,
                  checkpoints_ + (t / kCheckpointSteps * L_.batch + b0_) * u);
      last_cells_ = c;
    } else if (L_.cell == kGruAfter) {
      block_times(rows, hp, u, L_.w_h, g, L_.b_rec, 0, rec_.data(), g, u, g);  // h W_h + b_rec
      for (int64_t r = 0; r < rows; ++r) {
        if (m[r]) {
          gru_after_gates<T, kAct>(st + r * s, rec_.data() + r * g, hp + r * u, h + r * u, u);
        } else {
          std::copy(hp + r * u, hp + (r + 1) * u, h + r * u);
        }
      }
    } else {
      block_times(rows, hp, u, L_.w_h, g, static_cast<const T*>(nullptr), 0, rec_.data(), g,
                  u, 2 * u);  // h W_h[:, :2u]
      for (int64_t r = 0; r < rows; ++r)
        gru_before_gates<T>(st + r * s, rec_.data() + r * g, hp + r * u, u);
      // xw_n + (r h) W_h[:, 2u:], in place.
      block_times(rows, st + 3 * u, s, L_.w_h + 2 * u, g, st + 2 * u, s, st + 2 * u, s, u, u);
      for (int64_t r = 0; r < rows; ++r) {
        if (m[r]) {
          gru_before_output<T, kAct>(st + r * s, hp + r * u, h + r * u, u);
        } else {
          std::copy(hp + r * u, hp + (r + 1) * u, h + r * u);
        }
      }
    }
  }

  // After the last step: the final state into h_last (batch, u) (unless h_last is the kept
  // steps' states themselves), and the final cell state (zeros but for the LSTM) into
  // c_last (batch, u).
  void finish(T* h_last, T* c_last) {
    const int64_t u = u_, b1 = b0_ + rows_;
    if (!sequences_ || h_last != hs_) {
      const T* last = L_.time == 0 ? L_.h0 + b0_ * u : state(L_.time - 1);
      std::copy(last, last + rows_ * u, h_last + b0_ * u);
    }
    if (L_.cell != kLstm) {
      std::fill(c_last + b0_ * u, c_last + b1 * u, T(0));
    } else if (L_.time == 0) {
      std::copy(L_.c0 + b0_ * u, L_.c0 + b1 * u, c_last + b0_ * u);
    } else {
      std::copy(last_cells_, last_cells_ + rows_ * u, c_last + b0_ * u);
    }
  }

 private:
  const Layer<T>& L_;
  const int64_t b0_, rows_, u_, g_, s_;
  T* const hs_;
  T* const stash_;
  const bool sequences_;
  std::vector<T> states_[2];
  // Without a stash, one step's gate rows live here; the LSTM's cell state in two buffers
  // (the previous step's and this one's).
  std::vector<T> gates_, rec_;
  std::vector<T> cells_[2];
  T* const checkpoints_;           // the LSTM's c every kCheckpointSteps steps, or null
  const T* last_cells_ = nullptr;  // the LSTM's c after the latest step (rows u apart)
};

// One layer's forward pass over rows [b0, b1) (RowsForward over the layer's own input).
template <typename T, int kAct>
void forward_rows(const Layer<T>& L, int64_t b0, int64_t b1, T* hs, T* c_last, T* stash,
                  bool sequences) {
  RowsForward<T, kAct> run(L, b0, b1, hs, stash, sequences);
  for (int64_t t = 0; t < L.time; ++t)
    run.step(t, L.xs + (t * L.batch + b0) * L.inputs, L.inputs);
  run.finish(hs, c_last);
}

// Inference of a stack over rows [b0, b1): every layer advances one step before the next
// step begins, each reading the state the layer below has just formed, so no layer's
// (time, batch, u) outputs are written but the top's (when sequences: into hs_top).
// h_last[l] and c_last[l] (batch, u_l): each layer's final states.
template <typename T, int kAct>
void stack_rows(const std::vector<Layer<T>>& layers, int64_t b0, int64_t b1, T* hs_top,
                const std::vector<T*>& h_last, const std::vector<T*>& c_last, bool sequences) {
  const int64_t n = static_cast<int64_t>(layers.size());
  std::vector<std::unique_ptr<RowsForward<T, kAct>>> runs;
  for (int64_t l = 0; l < n; ++l) {
    const bool top_sequences = sequences && l == n - 1;
    runs.push_back(std::make_unique<RowsForward<T, kAct>>(
        layers[l], b0, b1, top_sequences ? hs_top : h_last[l], nullptr, top_sequences));
  }
  const Layer<T>& first = layers[0];
  for (int64_t t = 0; t < first.time; ++t) {
    runs[0]->step(t, first.xs + (t * first.batch + b0) * first.inputs, first.inputs);
    for (int64_t l = 1; l < n; ++l) runs[l]->step(t, runs[l - 1]->state(t), layers[l - 1].units);
  }
  for (int64_t l = 0; l < n; ++l) runs[l]->finish(h_last[l], c_last[l]);
}

// The backward pass's elementwise work for one row (noinline with __restrict, as above).
// total: the gradient reaching h_t. LSTM: x [i f g o], c_t and c_{t-1} (cp) in; dX [di df
// dg do] (pre-activation) and dc <- the gradient reaching c_{t-1}.
template <typename T, int kAct>
__attribute__((noinline)) void lstm_grads(const T* __restrict x, const T* __restrict c,
                                          const T* __restrict cp, const T* __restrict total,
                                          T* __restrict dc, T* __restrict dx, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    const V i = load_as<V>(x + j), f = load_as<V>(x + u + j), gg = load_as<V>(x + 2 * u + j);
    const V o = load_as<V>(x + 3 * u + j), a = act<kAct>(load_as<V>(c + j));
    const V tj = load_as<V>(total + j);
    const V dct = load_as<V>(dc + j) + tj * o * act_grad<kAct>(a);
    store_as(dx + j, dct * gg * i * (1 - i));
    store_as(dx + u + j, dct * load_as<V>(cp + j) * f * (1 - f));
    store_as(dx + 2 * u + j, dct * i * act_grad<kAct>(gg));
    store_as(dx + 3 * u + j, tj * a * o * (1 - o));
    store_as(dc + j, dct * f);
  });
}

// GRU: dX [dz dr dn] (pre-activation; reset_before's dr is formed later, from d(r h)),
// reset_after's dU = [dz dr r*dn], and dh <- the direct path z * total.
template <typename T, int kAct, bool kAfter>
__attribute__((noinline)) void gru_grads(const T* __restrict x, const T* __restrict hp,
                                         const T* __restrict total, T* __restrict dh,
                                         T* __restrict dx, T* __restrict du, int64_t u) {
  for (int64_t j = 0; j < u; ++j) {
    const T z = x[j], n = x[2 * u + j];
    const T dn = total[j] * (T(1) - z) * act_grad<kAct>(n);
    const T dz = total[j] * (hp[j] - n) * z * (T(1) - z);
    dx[j] = dz;
    dx[2 * u + j] = dn;
    dh[j] = total[j] * z;
    if constexpr (kAfter) {
      const T r = x[u + j];
      const T dr = dn * x[3 * u + j] * r * (T(1) - r);
      dx[u + j] = dr;
      du[j] = dz;
      du[u + j] = dr;
      du[2 * u + j] = dn * r;
    }
  }
}

// GRU reset_before: from d(r h) = dn W_h[:, 2u:]^T, r's gradient and the path through r h.
template <typename T>
__attribute__((noinline)) void gru_before_grads(const T* __restrict x, const T* __restrict hp,
                                                const T* __restrict d_rh, T* __restrict dh,
                                                T* __restrict dx, int64_t u) {
  for (int64_t j = 0; j < u; ++j) {
    const T r = x[u + j];
    dx[u + j] = d_rh[j] * hp[j] * r * (T(1) - r);
    dh[j] += d_rh[j] * r;
  }
}

// The LSTM's c_t = f c_{t-1} + i g of one row from its gates x [i f g o] (next_cell).
template <typename T>
__attribute__((noinline)) void lstm_cell(const T* __restrict x, const T* __restrict cp,
                                         T* __restrict c, int64_t u) {
  by_columns<T>(u, [&](int64_t j, auto like) {
    using V = decltype(like);
    store_as(c + j, next_cell(load_as<V>(x + j), load_as<V>(x + u + j),
                              load_as<V>(x + 2 * u + j), load_as<V>(cp + j)));
  });
}

// The LSTM's c_{first - 1} of rows b0 on (rows u apart), first a multiple of
// kCheckpointSteps: c0, or the stash's checkpoint after step first - 1.
template <typename T>
const T* cells_before(const Layer<T>& L, const T* stash, int64_t first, int64_t b0) {
  const int64_t u = L.units;
  if (first == 0) return L.c0 + b0 * u;
  const T* checkpoints = stash + L.time * L.batch * stash_of(kLstm) * u;
  return checkpoints + ((first / kCheckpointSteps - 1) * L.batch + b0) * u;
}

// The LSTM's c_t of rows [b0, b1) for steps [first, last] into cells ((step - first, row, u)),
// from c_{first - 1} (cells_before) and the stash's gates; a masked step holds c, as the
// forward pass.
template <typename T>
void recompute_cells(const Layer<T>& L, const T* stash, int64_t b0, int64_t b1, int64_t first,
                     int64_t last, T* cells) {
  const int64_t u = L.units, s = stash_of(kLstm) * u, rows = b1 - b0;
  const T* before = cells_before(L, stash, first, b0);
  for (int64_t t = first; t <= last; ++t) {
    T* now = cells + (t - first) * rows * u;
    for (int64_t r = 0; r < rows; ++r) {
      if (L.mask[t * L.batch + b0 + r]) {
        lstm_cell(stash + (t * L.batch + b0 + r) * s, before + r * u, now + r * u, u);
      } else {
        std::copy(before + r * u, before + (r + 1) * u, now + r * u);
      }
    }
    before = now;
  }
}

template <typename T>
struct Grads {
  const T *hs, *stash, *dy, *dh_last, *dc_last;
  const T *w_t, *w_xt;  // W_h^T (G*u, u) and W_x^T (G*u, inputs)
  T *dxs, *dh, *dc;
};

// Rows [b0, b1) of the backward pass: dxs = dX W_x^T and dh0 (dc0); adds this chunk's
// weight gradients to dw_h (u, G*u), dw_x (inputs, G*u), db_in and db_rec (G*u). dX and
// dU live only for a block of steps (a ring of about kBlockRows rows): the weight gradients
// are summed from them per block, the input's gradient per step.
//
// The backward's products (against W_h^T and W_x^T: depth G*u, u or inputs columns) in
// tiles of 8 rows by two vectors (16 sums): each step then reads W^T twice for a chunk
// of 16 rows, not four times (4 rows), while the tile stays two vectors wide. In a
// single-thread microbenchmark (16 rows, T 500, 64 units) the two products ran ~1.5x
// faster than with 4-row tiles; 4 rows by four vectors came between. (The trial of
// four vectors that made the training step slower, before the tiles were written in
// vectors, met the auto-vectoriser's slow one-vector tiles at 32 inputs.)
// With AVX2's 16 registers, 6 rows by two vectors (12 sums: see add_transposed_products).
constexpr int kBackwardVectors = 2, kBackwardRows = stackrnn::kRegisters >= 32 ? 8 : 6;

// The weight gradients are summed over blocks of about 64 rows (4 steps of a 16-row
// chunk), and the ring's rows are one cache line longer than the G*u gates. At 256 gate
// columns (LSTM, 64 units) the rows were 1 KB apart and 256 of them (16 steps): a tile's
// column of the ring fell into 4 of L1's 64 sets, and the hs rows it is multiplied with,
// 16 steps of them, into 16; both were read from L2 for every tile. In a single-thread
// microbenchmark of add_transposed_products at these shapes (AVX2, 2-core AMD EPYC) the
// sums ran at ~62-72 GFLOP/s that way and ~80 with 64-row blocks and padded rows (the
// train steps: bench/results/cpu-avx2/ring-blocks-lstm).
constexpr int64_t kBlockRows = 64;

// out = v w over `rows` rows (depth, n: as block_times) in the backward's tiles.
template <typename T>
void backward_times(int64_t rows, const T* v, int64_t lv, const T* w, int64_t lw, T* out,
                    int64_t lo, int64_t depth, int64_t n) {
  block_times<T, kBackwardVectors, kBackwardRows>(rows, v, lv, w, lw, nullptr, 0, out, lo,
                                                  depth, n);
}

template <typename T, int kAct>
void backward_rows(const Layer<T>& L, const Grads<T>& D, int64_t b0, int64_t b1, T* dw_h,
                   T* dw_x, T* db_in, T* db_rec) {
  const int64_t u = L.units, g = gates_of(L.cell) * u, s = stash_of(L.cell) * u;
  const int64_t rows = b1 - b0, step = L.batch * u;
  const int64_t block = std::max<int64_t>(1, kBlockRows / rows);  // steps per update
  const int64_t lg = g + 64 / static_cast<int64_t>(sizeof(T));  // ring rows: a line more
  const bool lstm = L.cell == kLstm, after = L.cell == kGruAfter;
  std::vector<T> product(rows * u), total(u);
  std::vector<T> ring_x(block * rows * lg), ring_u(after ? block * rows * lg : 0);
  // The LSTM's c_t of the current block of kCheckpointSteps steps, from its first step on.
  std::vector<T> cells(lstm ? kCheckpointSteps * rows * u : 0);
  int64_t first = 0;
  std::vector<const T*> block_h, block_x, block_d, block_u, block_rh;
  T* dh = D.dh + b0 * u;
  T* dc = D.dc + b0 * u;
  std::copy(D.dh_last + b0 * u, D.dh_last + b1 * u, dh);
  if (lstm) std::copy(D.dc_last + b0 * u, D.dc_last + b1 * u, dc);
  for (int64_t t = L.time - 1; t >= 0; --t) {
    if (lstm && (t == L.time - 1 || (t + 1) % kCheckpointSteps == 0)) {
      first = t / kCheckpointSteps * kCheckpointSteps;
      recompute_cells(L, D.stash, b0, b1, first, t, cells.data());
    }
    const T* hp = (t == 0 ? L.h0 : D.hs + (t - 1) * step) + b0 * u;
    const T* st = D.stash + (t * L.batch + b0) * s;
    const bool* m = L.mask + t * L.batch + b0;
    T* dx = ring_x.data() + block_h.size() * rows * lg;
    T* du = after ? ring_u.data() + block_h.size() * rows * lg : dx;
    for (int64_t r = 0; r < rows; ++r) {
      T* dxr = dx + r * lg;
      T* dur = du + r * lg;
      if (!m[r]) {  // a masked step passes dh (and dc) through
        std::fill(dxr, dxr + g, T(0));
        if (after) std::fill(dur, dur + g, T(0));
        continue;
      }
      // The gradient reaching h_t: through the carry, plus the output's own (when given).
      T* dhr = dh + r * u;
      const T* dyr = D.dy ? D.dy + t * step + (b0 + r) * u : nullptr;
      for (int64_t j = 0; j < u; ++j) total[j] = dhr[j] + (dyr ? dyr[j] : T(0));
      const T* x = st + r * s;
      if (lstm) {
        const T* c = cells.data() + ((t - first) * rows + r) * u;
        const T* cp = t > first ? c - rows * u : cells_before(L, D.stash, first, b0 + r);
        lstm_grads<T, kAct>(x, c, cp, total.data(), dc + r * u, dxr, u);
      } else if (after) {
        gru_grads<T, kAct, true>(x, hp + r * u, total.data(), dhr, dxr, dur, u);
      } else {
        gru_grads<T, kAct, false>(x, hp + r * u, total.data(), dhr, dxr, nullptr, u);
      }
    }
    if (L.cell == kGruBefore) {
      backward_times(rows, dx + 2 * u, lg, D.w_t + 2 * u * u, u, product.data(), u, u, u);
      for (int64_t r = 0; r < rows; ++r)
        if (m[r])
          gru_before_grads<T>(st + r * s, hp + r * u, product.data() + r * u, dh + r * u,
                              dx + r * lg, u);
    }
    // dh <- dU W_h^T (GRU: added to the direct paths); GRU reset_before: z and r only.
    const int64_t depth = L.cell == kGruBefore ? 2 * u : g;
    backward_times(rows, du, lg, D.w_t, u, product.data(), u, depth, u);
    for (int64_t r = 0; r < rows; ++r) {
      if (!m[r]) continue;
      const T* prr = product.data() + r * u;
      T* dhr = dh + r * u;
      if (lstm) {
        std::copy(prr, prr + u, dhr);
      } else {
        for (int64_t j = 0; j < u; ++j) dhr[j] += prr[j];
      }
    }
    // The input's gradient (masked rows: dX is zero there).
    backward_times(rows, dx, lg, D.w_xt, L.inputs, D.dxs + (t * L.batch + b0) * L.inputs,
                   L.inputs, g, L.inputs);
    block_h.push_back(hp);
    block_x.push_back(L.xs + (t * L.batch + b0) * L.inputs);
    block_d.push_back(dx);
    block_u.push_back(du);
    block_rh.push_back(st + 3 * u);
    if (static_cast<int64_t>(block_h.size()) == block || t == 0) {
      const int64_t n = block_h.size();
      add_transposed_products(block_x.data(), L.inputs, block_d.data(), lg, n, rows, dw_x, g,
                              L.inputs, g);
      for (const T* d : block_d)
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t j = 0; j < g; ++j) db_in[j] += d[r * lg + j];
      if (L.cell == kGruBefore) {
        add_transposed_products(block_h.data(), u, block_d.data(), lg, n, rows, dw_h, g, u,
                                2 * u);
        for (auto& d : block_d) d += 2 * u;  // the candidate's columns, against r * h
        add_transposed_products(block_rh.data(), s, block_d.data(), lg, n, rows, dw_h + 2 * u,
                                g, u, u);
      } else {
        add_transposed_products(block_h.data(), u, block_u.data(), lg, n, rows, dw_h, g, u, g);
      }
      if (after)
        for (const T* d : block_u)
          for (int64_t r = 0; r < rows; ++r)
            for (int64_t j = 0; j < g; ++j) db_rec[j] += d[r * lg + j];
      block_h.clear();
      block_x.clear();
      block_d.clear();
      block_u.clear();
      block_rh.clear();
    }
  }
  if (!lstm) std::fill(dc, dc + rows * u, T(0));
}

// Calls run(std::integral_constant<int, kAct>) for the activation code.
template <typename Run>
void by_activation(int64_t activation, Run run) {
  if (activation == 0) {
    run(std::integral_constant<int, 0>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
}

// A layer of `inputs` features over (time, batch) steps: its weights, carries and mask.
ffi::Error check_weights(int64_t cell, int64_t activation, int64_t time, int64_t batch,
                         int64_t inputs, ffi::DataType type, const ffi::AnyBuffer& w_x,
                         const ffi::AnyBuffer& w_h, const ffi::AnyBuffer& h0,
                         const ffi::AnyBuffer& c0, const ffi::AnyBuffer& mask) {
  if (cell < 0 || cell > 3 || activation < 0 || activation > 1) {
    return ffi::Error::InvalidArgument("stackrnn gated: unknown cell or activation code");
  }
  auto wx = w_x.dimensions(), wh = w_h.dimensions(), h = h0.dimensions(), c = c0.dimensions(),
       m = mask.dimensions();
  const int64_t g = gates_of(cell);
  if (wx.size() != 2 || wh.size() != 2 || h.size() != 2 || c.size() != 2 || m.size() != 2 ||
      wx[0] != inputs || wh[1] != g * wh[0] || wx[1] != wh[1] || h[0] != batch ||
      h[1] != wh[0] || c[0] != h[0] || c[1] != h[1] || m[0] != time || m[1] != batch) {
    return ffi::Error::InvalidArgument("stackrnn gated: inconsistent shapes");
  }
  if (w_x.element_type() != type || w_h.element_type() != type || h0.element_type() != type ||
      c0.element_type() != type || mask.element_type() != ffi::DataType::PRED) {
    return ffi::Error::InvalidArgument("stackrnn gated: mixed dtypes or a non-bool mask");
  }
  return ffi::Error::Success();
}

ffi::Error check_layer(int64_t cell, int64_t activation, const ffi::AnyBuffer& xs,
                       const ffi::AnyBuffer& w_x, const ffi::AnyBuffer& w_h,
                       const ffi::AnyBuffer& h0, const ffi::AnyBuffer& c0,
                       const ffi::AnyBuffer& mask) {
  auto x = xs.dimensions();
  if (x.size() != 3) return ffi::Error::InvalidArgument("stackrnn gated: inconsistent shapes");
  return check_weights(cell, activation, x[0], x[1], x[2], xs.element_type(), w_x, w_h, h0, c0,
                       mask);
}

template <typename T>
Layer<T> layer_of(int64_t cell, const ffi::AnyBuffer& xs, const ffi::AnyBuffer& w_x,
                  const ffi::AnyBuffer& b_in, const ffi::AnyBuffer& w_h,
                  const ffi::AnyBuffer& b_rec, const ffi::AnyBuffer& h0,
                  const ffi::AnyBuffer& c0, const ffi::AnyBuffer& mask) {
  auto x = xs.dimensions();
  return Layer<T>{x[0], x[1], h0.dimensions()[1], x[2], cell,
                  xs.typed_data<T>(), w_x.typed_data<T>(), b_in.typed_data<T>(),
                  w_h.typed_data<T>(), b_rec.typed_data<T>(), h0.typed_data<T>(),
                  c0.typed_data<T>(), static_cast<const bool*>(mask.untyped_data())};
}

// stash null: inference (nothing kept for a backward pass). sequences false: hs is
// (batch, u), the final state only.
ffi::Error forward(ffi::ThreadPool pool, const ffi::AnyBuffer& xs, const ffi::AnyBuffer& w_x,
                   const ffi::AnyBuffer& b_in, const ffi::AnyBuffer& w_h,
                   const ffi::AnyBuffer& b_rec, const ffi::AnyBuffer& h0,
                   const ffi::AnyBuffer& c0, const ffi::AnyBuffer& mask, ffi::AnyBuffer* hs,
                   ffi::AnyBuffer* c_last, ffi::AnyBuffer* stash, int64_t cell,
                   int64_t activation, bool sequences) {
  if (auto error = check_layer(cell, activation, xs, w_x, w_h, h0, c0, mask); error.failure())
    return error;
  const auto out = hs->dimensions();
  const int64_t want = sequences ? 3 : 2;
  if (static_cast<int64_t>(out.size()) != want ||
      (sequences && out[0] != xs.dimensions()[0]) || out[want - 2] != h0.dimensions()[0] ||
      out[want - 1] != h0.dimensions()[1]) {
    return ffi::Error::InvalidArgument("stackrnn gated: hs has the wrong shape");
  }
  if (stash && (stash->dimensions().size() != 1 ||
                stash->dimensions()[0] != stash_size(cell, xs.dimensions()[0],
                                                     xs.dimensions()[1], h0.dimensions()[1]))) {
    return ffi::Error::InvalidArgument("stackrnn gated: the stash has the wrong size");
  }
  return by_dtype(xs.element_type(), "gated", [&](auto type) {
    using T = decltype(type);
    const Layer<T> L = layer_of<T>(cell, xs, w_x, b_in, w_h, b_rec, h0, c0, mask);
    T* kept = stash ? stash->typed_data<T>() : nullptr;
    // The outputs this call writes in full: (time, batch, ...) arrays, megabytes.
    if (stash) stackrnn::prefer_huge_pages(kept, stash->size_bytes());
    if (sequences) stackrnn::prefer_huge_pages(hs->untyped_data(), hs->size_bytes());
    by_activation(activation, [&](auto code) {
      over_rows(pool, L.batch, [&](int64_t b0, int64_t b1) {
        forward_rows<T, decltype(code)::value>(L, b0, b1, hs->typed_data<T>(),
                                               c_last->typed_data<T>(), kept, sequences);
      });
    });
  });
}

ffi::Error Train(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer w_x, ffi::AnyBuffer b_in,
                 ffi::AnyBuffer w_h, ffi::AnyBuffer b_rec, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                 ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> hs,
                 ffi::Result<ffi::AnyBuffer> c_last, ffi::Result<ffi::AnyBuffer> stash,
                 int64_t cell, int64_t activation) {
  if (cell == kSimple) return ffi::Error::InvalidArgument("stackrnn gated: no SimpleRNN training");
  return forward(pool, xs, w_x, b_in, w_h, b_rec, h0, c0, mask, &*hs, &*c_last, &*stash, cell,
                 activation, true);
}

ffi::Error Infer(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer w_x, ffi::AnyBuffer b_in,
                 ffi::AnyBuffer w_h, ffi::AnyBuffer b_rec, ffi::AnyBuffer h0, ffi::AnyBuffer c0,
                 ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> hs,
                 ffi::Result<ffi::AnyBuffer> c_last, int64_t cell, int64_t activation,
                 int64_t sequences) {
  return forward(pool, xs, w_x, b_in, w_h, b_rec, h0, c0, mask, &*hs, &*c_last, nullptr, cell,
                 activation, sequences != 0);
}

// Inference of a stack of one cell in one call (stack_rows): xs (time, batch, inputs) and
// mask (time, batch), then six buffers a layer: w_x, b_in, w_h, b_rec, h0, c0. Returns two
// a layer, its final h and c (batch, u), then with sequences the top layer's states
// (time, batch, u_top).
ffi::Error InferStack(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer mask,
                      ffi::RemainingArgs weights, ffi::RemainingRets outputs, int64_t cell,
                      int64_t activation, int64_t sequences) {
  const int64_t n = static_cast<int64_t>(weights.size()) / 6;
  if (n < 1 || static_cast<int64_t>(weights.size()) != 6 * n ||
      static_cast<int64_t>(outputs.size()) != 2 * n + (sequences ? 1 : 0)) {
    return ffi::Error::InvalidArgument("stackrnn gated stack: expected 6 inputs and 2 outputs "
                                       "a layer (and the top's states with sequences)");
  }
  auto x = xs.dimensions();
  if (x.size() != 3) return ffi::Error::InvalidArgument("stackrnn gated: inconsistent shapes");
  std::vector<ffi::AnyBuffer> w;
  for (int64_t i = 0; i < 6 * n; ++i) {
    auto arg = weights.get<ffi::AnyBuffer>(i);
    if (arg.has_error()) return arg.error();
    w.push_back(*arg);
  }
  std::vector<ffi::Result<ffi::AnyBuffer>> out;
  for (int64_t i = 0; i < 2 * n + (sequences ? 1 : 0); ++i) {
    auto ret = outputs.get<ffi::AnyBuffer>(i);
    if (ret.has_error()) return ret.error();
    out.push_back(*ret);
  }
  int64_t inputs = x[2];
  for (int64_t l = 0; l < n; ++l) {
    const auto& h0 = w[6 * l + 4];
    if (auto error = check_weights(cell, activation, x[0], x[1], inputs, xs.element_type(),
                                   w[6 * l], w[6 * l + 2], h0, w[6 * l + 5], mask);
        error.failure())
      return error;
    for (int64_t k : {2 * l, 2 * l + 1}) {
      auto d = out[k]->dimensions();
      if (d.size() != 2 || d[0] != x[1] || d[1] != h0.dimensions()[1])
        return ffi::Error::InvalidArgument("stackrnn gated stack: a final state's shape");
    }
    inputs = h0.dimensions()[1];
  }
  if (sequences) {
    auto top = out[2 * n]->dimensions();
    if (top.size() != 3 || top[0] != x[0] || top[1] != x[1] || top[2] != inputs)
      return ffi::Error::InvalidArgument("stackrnn gated stack: the top's states' shape");
  }
  return by_dtype(xs.element_type(), "gated", [&](auto type) {
    using T = decltype(type);
    std::vector<Layer<T>> layers;
    std::vector<T*> h_last, c_last;
    int64_t features = x[2];
    for (int64_t l = 0; l < n; ++l) {
      const ffi::AnyBuffer* b = &w[6 * l];
      layers.push_back(Layer<T>{x[0], x[1], b[4].dimensions()[1], features, cell,
                                l == 0 ? xs.typed_data<T>() : nullptr, b[0].typed_data<T>(),
                                b[1].typed_data<T>(), b[2].typed_data<T>(),
                                b[3].typed_data<T>(), b[4].typed_data<T>(),
                                b[5].typed_data<T>(),
                                static_cast<const bool*>(mask.untyped_data())});
      h_last.push_back(out[2 * l]->typed_data<T>());
      c_last.push_back(out[2 * l + 1]->typed_data<T>());
      features = layers.back().units;
    }
    T* hs_top = sequences ? out[2 * n]->typed_data<T>() : nullptr;
    if (hs_top) stackrnn::prefer_huge_pages(hs_top, out[2 * n]->size_bytes());
    by_activation(activation, [&](auto code) {
      over_rows(pool, x[1], [&](int64_t b0, int64_t b1) {
        stack_rows<T, decltype(code)::value>(layers, b0, b1, hs_top, h_last, c_last,
                                             sequences != 0);
      });
    });
  });
}

template <typename T>
void backward_typed(ffi::ThreadPool pool, const Layer<T>& L, Grads<T> D, T* dw_h, T* dw_x,
                    T* db_in, T* db_rec, int64_t activation) {
  const int64_t u = L.units, g = gates_of(L.cell) * u;
  // W_h^T and W_x^T, so that dh <- dU W_h^T and dxs = dX W_x^T read rows.
  std::vector<T> w_t(g * u), w_xt(g * L.inputs);
  for (int64_t i = 0; i < u; ++i)
    for (int64_t j = 0; j < g; ++j) w_t[j * u + i] = L.w_h[i * g + j];
  for (int64_t i = 0; i < L.inputs; ++i)
    for (int64_t j = 0; j < g; ++j) w_xt[j * L.inputs + i] = L.w_x[i * g + j];
  D.w_t = w_t.data();
  D.w_xt = w_xt.data();
  // Each chunk's [dW_h dW_x db_in db_rec], summed in row order at the end.
  const int64_t wh = u * g, wx = L.inputs * g;
  stackrnn::ChunkSums<T> sums(wh + wx + 2 * g);
  by_activation(activation, [&](auto code) {
    over_rows(pool, L.batch, [&](int64_t b0, int64_t b1) {
      T* part = sums.part(b0);
      backward_rows<T, decltype(code)::value>(L, D, b0, b1, part, part + wh, part + wh + wx,
                                              part + wh + wx + g);
    });
  });
  sums.sum_into(0, wh, dw_h);
  sums.sum_into(wh, wx, dw_x);
  sums.sum_into(wh + wx, g, db_in);
  sums.sum_into(wh + wx + g, g, db_rec);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer xs, ffi::AnyBuffer w_x,
                    ffi::AnyBuffer w_h, ffi::AnyBuffer h0, ffi::AnyBuffer c0, ffi::AnyBuffer mask,
                    ffi::AnyBuffer hs, ffi::AnyBuffer stash, ffi::AnyBuffer dy,
                    ffi::AnyBuffer dh_last, ffi::AnyBuffer dc_last,
                    ffi::Result<ffi::AnyBuffer> dxs, ffi::Result<ffi::AnyBuffer> dh0,
                    ffi::Result<ffi::AnyBuffer> dc0, ffi::Result<ffi::AnyBuffer> dw_h,
                    ffi::Result<ffi::AnyBuffer> dw_x, ffi::Result<ffi::AnyBuffer> db_in,
                    ffi::Result<ffi::AnyBuffer> db_rec, int64_t cell, int64_t activation,
                    int64_t with_dy) {
  if (cell == kSimple) return ffi::Error::InvalidArgument("stackrnn gated: no SimpleRNN training");
  if (auto error = check_layer(cell, activation, xs, w_x, w_h, h0, c0, mask); error.failure())
    return error;
  auto x = xs.dimensions(), k = stash.dimensions();
  if (k.size() != 1 || k[0] != stash_size(cell, x[0], x[1], h0.dimensions()[1])) {
    return ffi::Error::InvalidArgument("stackrnn gated: the stash does not match the layer");
  }
  return by_dtype(xs.element_type(), "gated", [&](auto type) {
    using T = decltype(type);
    // The biases are not read backward: w_x stands in for them.
    const Layer<T> L = layer_of<T>(cell, xs, w_x, w_x, w_h, w_x, h0, c0, mask);
    Grads<T> D{hs.typed_data<T>(), stash.typed_data<T>(),
               with_dy ? dy.typed_data<T>() : nullptr, dh_last.typed_data<T>(),
               dc_last.typed_data<T>(), nullptr, nullptr, dxs->typed_data<T>(),
               dh0->typed_data<T>(), dc0->typed_data<T>()};
    stackrnn::prefer_huge_pages(D.dxs, dxs->size_bytes());
    backward_typed<T>(pool, L, D, dw_h->typed_data<T>(), dw_x->typed_data<T>(),
                      db_in->typed_data<T>(), db_rec->typed_data<T>(), activation);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnGatedTrain, Train,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // b_in
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // b_rec
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Ret<ffi::AnyBuffer>()  // hs
                                  .Ret<ffi::AnyBuffer>()  // c_last
                                  .Ret<ffi::AnyBuffer>()  // stash
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnGatedInfer, Infer,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()  // hs, or the final h
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("sequences"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnGatedInferStack, InferStack,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .RemainingArgs()        // six a layer
                                  .RemainingRets()        // two a layer, [top's states]
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("sequences"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnGatedBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()  // xs
                                  .Arg<ffi::AnyBuffer>()  // w_x
                                  .Arg<ffi::AnyBuffer>()  // w_h
                                  .Arg<ffi::AnyBuffer>()  // h0
                                  .Arg<ffi::AnyBuffer>()  // c0
                                  .Arg<ffi::AnyBuffer>()  // mask
                                  .Arg<ffi::AnyBuffer>()  // hs
                                  .Arg<ffi::AnyBuffer>()  // stash
                                  .Arg<ffi::AnyBuffer>()  // dy (read when with_dy)
                                  .Arg<ffi::AnyBuffer>()  // dh_last
                                  .Arg<ffi::AnyBuffer>()  // dc_last
                                  .Ret<ffi::AnyBuffer>()  // dxs: the input's gradient
                                  .Ret<ffi::AnyBuffer>()  // dh0
                                  .Ret<ffi::AnyBuffer>()  // dc0
                                  .Ret<ffi::AnyBuffer>()  // dw_h
                                  .Ret<ffi::AnyBuffer>()  // dw_x
                                  .Ret<ffi::AnyBuffer>()  // db_in
                                  .Ret<ffi::AnyBuffer>()  // db_rec
                                  .Attr<int64_t>("cell")
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("with_dy"));
