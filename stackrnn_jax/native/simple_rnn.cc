// The SimpleRNN recurrence as one CPU call per layer and direction (XLA FFI).
//
// XLA runs a lax.scan step's small (batch, units) @ (units, units) matmul on one core,
// with a loop iteration's worth of bookkeeping around it. Batch rows are independent
// recurrences, so here each call splits the rows into one chunk per thread of XLA's own
// intra-op pool and runs all T steps of a chunk without synchronising with the others.
//
// Forward:  hs[t, b] = act(xw[t, b] + hs[t-1, b] @ W)   where mask[t, b], else hs[t-1, b]
//           (hs[-1] = h0; the carry is held through masked steps, as common.masked_step).
// Backward: da[t, b] = (dh[b] + dy[t, b]) * act'(hs[t, b]), dh[b] <- da[t, b] @ W^T
//           where mask[t, b]; else da[t, b] = 0 and dh[b] passes through. with_dy = 0:
//           the outputs have no cotangent (dy is not read; a layer read only through
//           its final state). Returns dxw = da (time, batch, units), dh0 = dh after
//           step 0, and the weight gradients dW = H_prev^T dA (H_prev[t] = hs[t-1], h0
//           at t = 0) and dW_x = X^T dA, summed every 16 steps while their rows are in
//           cache (XLA's (units, time*batch) @ (time*batch, units) matmuls ran at ~55-70
//           GFLOP/s here, behind copies of their operands).
//
// Shapes: xw, hs, dy, da (time, batch, units); xs (time, batch, inputs); h0, dh (batch,
// units); W (units, units); dW_x (inputs, units); mask (time, batch) bool. Row-major.
// activation: 0 tanh, 1 relu.
//
// The step's products are row_matmul.h's register tiles, as gated.cc's. (This file had
// its own tiles of plain arrays, left to the auto-vectoriser: with AVX-512 they were as
// fast, with AVX2 it vectorised them across rows with shuffles and a 2x64 train step at
// batch 32, T 500 took 85 ms instead of 31.)

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
using stackrnn::store_as;
using stackrnn::tanh_of;

template <typename T>
void activate(T* row, int64_t n, int64_t activation) {
  if (activation == 0) {
    by_columns<T>(n, [&](int64_t j, auto like) {
      store_as(row + j, tanh_of(load_as<decltype(like)>(row + j)));
    });
  } else {
    for (int64_t j = 0; j < n; ++j) row[j] = row[j] > T(0) ? row[j] : T(0);
  }
}

template <typename T>
void forward_rows(int64_t b0, int64_t b1, int64_t time, int64_t batch, int64_t units,
                  const T* xw, const T* h0, const T* w, const bool* mask, int64_t activation,
                  T* hs) {
  const int64_t step = batch * units;
  for (int64_t t = 0; t < time; ++t) {
    const T* before = t == 0 ? h0 : hs + (t - 1) * step;
    T* now = hs + t * step;
    block_times(b1 - b0, before + b0 * units, units, w, units, xw + t * step + b0 * units,
                units, now + b0 * units, units, units, units);
    activate(now + b0 * units, (b1 - b0) * units, activation);
    for (int64_t b = b0; b < b1; ++b) {
      if (!mask[t * batch + b]) {
        std::copy(before + b * units, before + (b + 1) * units, now + b * units);
      }
    }
  }
}

template <typename T>
void backward_rows(int64_t b0, int64_t b1, int64_t time, int64_t batch, int64_t units,
                   int64_t inputs, const T* hs, const T* h0, const T* xs, const T* dy,
                   const T* dh_last, const T* w_t, const bool* mask, int64_t activation,
                   T* da, T* dh, T* dw, T* dwx) {
  const int64_t step = batch * units;
  constexpr int64_t kBlock = 16;  // steps per dW update: their rows are still in cache
  std::vector<T> product(batch * units);
  std::vector<const T*> block_a, block_x, block_d;
  std::copy(dh_last + b0 * units, dh_last + b1 * units, dh + b0 * units);
  for (int64_t t = time - 1; t >= 0; --t) {
    T* d = da + t * step;
    for (int64_t b = b0; b < b1; ++b) {
      T* d_row = d + b * units;
      const T* dh_row = dh + b * units;
      const T* h = hs + t * step + b * units;
      if (!mask[t * batch + b]) {
        std::fill(d_row, d_row + units, T(0));
        continue;
      }
      // The gradient reaching h_t: through the carry, plus the output's own (when given).
      if (dy != nullptr) {
        const T* g = dy + t * step + b * units;
        for (int64_t j = 0; j < units; ++j) d_row[j] = dh_row[j] + g[j];
      } else {
        std::copy(dh_row, dh_row + units, d_row);
      }
      if (activation == 0) {
        for (int64_t j = 0; j < units; ++j) d_row[j] *= T(1) - h[j] * h[j];
      } else {
        for (int64_t j = 0; j < units; ++j) d_row[j] = h[j] > T(0) ? d_row[j] : T(0);
      }
    }
    block_times(b1 - b0, d + b0 * units, units, w_t, units, static_cast<const T*>(nullptr), 0,
                product.data() + b0 * units, units, units, units);
    for (int64_t b = b0; b < b1; ++b) {  // a masked step passes dh through
      if (mask[t * batch + b]) {
        std::copy(product.data() + b * units, product.data() + (b + 1) * units, dh + b * units);
      }
    }
    block_a.push_back((t == 0 ? h0 : hs + (t - 1) * step) + b0 * units);  // H_prev rows
    block_x.push_back(xs + (t * batch + b0) * inputs);                      // X rows
    block_d.push_back(d + b0 * units);
    if (static_cast<int64_t>(block_a.size()) == kBlock || t == 0) {
      add_transposed_products(block_a.data(), units, block_d.data(), units,
                              block_a.size(), b1 - b0, dw, units, units, units);
      add_transposed_products(block_x.data(), inputs, block_d.data(), units,
                              block_x.size(), b1 - b0, dwx, units, inputs, units);
      block_a.clear();
      block_x.clear();
      block_d.clear();
    }
  }
}

ffi::Error check_shapes(const ffi::AnyBuffer& seq, const ffi::AnyBuffer& state,
                        const ffi::AnyBuffer& w, const ffi::AnyBuffer& mask) {
  auto s = seq.dimensions(), h = state.dimensions(), k = w.dimensions(), m = mask.dimensions();
  if (s.size() != 3 || h.size() != 2 || k.size() != 2 || m.size() != 2 || h[0] != s[1] ||
      h[1] != s[2] || k[0] != s[2] || k[1] != s[2] || m[0] != s[0] || m[1] != s[1]) {
    return ffi::Error::InvalidArgument("stackrnn simple_rnn: inconsistent shapes");
  }
  if (seq.element_type() != state.element_type() || seq.element_type() != w.element_type() ||
      mask.element_type() != ffi::DataType::PRED) {
    return ffi::Error::InvalidArgument("stackrnn simple_rnn: mixed dtypes or a non-bool mask");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::AnyBuffer xw, ffi::AnyBuffer h0, ffi::AnyBuffer w,
                   ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> hs,
                   int64_t activation) {
  if (auto error = check_shapes(xw, h0, w, mask); error.failure()) return error;
  auto dims = xw.dimensions();
  const int64_t time = dims[0], batch = dims[1], units = dims[2];
  const bool* m = static_cast<const bool*>(mask.untyped_data());
  stackrnn::prefer_huge_pages(hs->untyped_data(), hs->size_bytes());
  return by_dtype(xw.element_type(), "simple_rnn", [&](auto type) {
    using T = decltype(type);
    over_rows(pool, batch, [&](int64_t b0, int64_t b1) {
      forward_rows<T>(b0, b1, time, batch, units, xw.typed_data<T>(), h0.typed_data<T>(),
                      w.typed_data<T>(), m, activation, hs->typed_data<T>());
    });
  });
}

template <typename T>
void backward_typed(ffi::ThreadPool pool, int64_t time, int64_t batch, int64_t units,
                    int64_t inputs, const T* hs, const T* h0, const T* xs, const T* dy,
                    const T* dh_last, const T* w, const bool* mask, int64_t activation, T* da,
                    T* dh0, T* dw, T* dwx) {
  std::vector<T> w_t(units * units);  // W^T, so that dh <- da W^T reads rows
  for (int64_t i = 0; i < units; ++i)
    for (int64_t j = 0; j < units; ++j) w_t[j * units + i] = w[i * units + j];
  // Each chunk's [dW dW_x], summed in row order at the end.
  stackrnn::ChunkSums<T> sums((units + inputs) * units);
  over_rows(pool, batch, [&](int64_t b0, int64_t b1) {
    T* part = sums.part(b0);
    backward_rows<T>(b0, b1, time, batch, units, inputs, hs, h0, xs, dy, dh_last, w_t.data(),
                     mask, activation, da, dh0, part, part + units * units);
  });
  sums.sum_into(0, units * units, dw);
  sums.sum_into(units * units, inputs * units, dwx);
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::AnyBuffer hs, ffi::AnyBuffer h0,
                    ffi::AnyBuffer xs, ffi::AnyBuffer dy, ffi::AnyBuffer dh_last,
                    ffi::AnyBuffer w, ffi::AnyBuffer mask, ffi::Result<ffi::AnyBuffer> da,
                    ffi::Result<ffi::AnyBuffer> dh0, ffi::Result<ffi::AnyBuffer> dw,
                    ffi::Result<ffi::AnyBuffer> dwx, int64_t activation, int64_t with_dy) {
  if (auto error = check_shapes(hs, dh_last, w, mask); error.failure()) return error;
  if (auto error = check_shapes(hs, h0, w, mask); error.failure()) return error;
  auto dims = hs.dimensions(), x_dims = xs.dimensions();
  const int64_t time = dims[0], batch = dims[1], units = dims[2];
  if (x_dims.size() != 3 || x_dims[0] != time || x_dims[1] != batch ||
      xs.element_type() != hs.element_type()) {
    return ffi::Error::InvalidArgument("stackrnn simple_rnn: inputs do not match the states");
  }
  const int64_t inputs = x_dims[2];
  const bool* m = static_cast<const bool*>(mask.untyped_data());
  stackrnn::prefer_huge_pages(da->untyped_data(), da->size_bytes());
  return by_dtype(hs.element_type(), "simple_rnn", [&](auto type) {
    using T = decltype(type);
    backward_typed<T>(pool, time, batch, units, inputs, hs.typed_data<T>(),
                      h0.typed_data<T>(), xs.typed_data<T>(),
                      with_dy ? dy.typed_data<T>() : nullptr, dh_last.typed_data<T>(),
                      w.typed_data<T>(), m, activation, da->typed_data<T>(),
                      dh0->typed_data<T>(), dw->typed_data<T>(), dwx->typed_data<T>());
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnSimpleForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("activation"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(StackrnnSimpleBackward, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("activation")
                                  .Attr<int64_t>("with_dy"));
