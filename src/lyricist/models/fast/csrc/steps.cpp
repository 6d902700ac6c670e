// One LSTM or GRU layer's time loop, forward and backward, with each step's gate math in one pass.
//
// Why C++: in Python a step's gate math is ~8 small torch calls on (B, H) tensors, and at
// B = 32, H = 256 their dispatch costs more than the arithmetic: ~70 us a step, against ~95 us
// for the step's matrix product. Here it is one loop over B x H that the compiler vectorises
// (-O3 -ffast-math lets it use glibc's vector exp/tanh): ~21 us forward, ~6 us backward; and
// the time loop itself runs here too, so no Python runs between steps. The products are the
// ones matmul.py makes (MKL or oneDNN on a packed weight). fused.py calls lstm_forward/lstm_backward
// and gru_forward/gru_backward, and falls back to the same math in torch ops when this file
// cannot be compiled. The GRU's step was ~6 torch calls forward and ~7 backward, plus passes over
// all T for the coefficients and a concatenation: at 2 x 512, B 64 its training step ran at 0.95 x torch.nn's.
//
// Layout: every (B, .) slice is contiguous; gates are (B, 4H) in torch.nn's order i, f, g, o
// (LSTM) or (B, 3H) in r, z, n (GRU).

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/extension.h>

#include <cmath>
#include <string>

namespace {

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

void check(const torch::Tensor& t, const char* name, const torch::Tensor& like, int64_t columns) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the gates' dtype");
  TORCH_CHECK(t.dim() == 2 && t.size(0) == like.size(0) && t.size(1) == columns, name, " has the wrong shape");
}

// The rows of one step's gate math, split over torch's threads when the step is large enough
// (the products already use them; one core alone did the gate math before). At 2 x 512, B 64 a
// step's gate math is 64 x 512 entries, large enough; at 32 x 256 it stays on one thread, where
// starting the threads would cost about what it saves.
constexpr int64_t kParallelEntries = 16384;
template <typename F>
void for_rows(int64_t batch, int64_t hidden, const F& row) {
  at::parallel_for(0, batch, std::max<int64_t>(1, kParallelEntries / hidden), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) row(b);
  });
}

// One row (one sequence of the batch) of the forward step. x (4H): the input half of the
// pre-activations; r (4H): the recurrent half W_hh h_{t-1}; bias (4H): b_hh. Writes the
// activations i, f, g, o into g_out (4H: what backward needs); c = f * c_prev + i * g,
// tanh_c = tanh(c), h = o * tanh_c.
template <typename T>
void forward_row(const T* x, const T* r, const T* bias, T* g_out, const T* c_prev, T* c, T* tanh_c, T* h,
                 int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T i = sigmoid(x[j] + r[j] + bias[j]);
    const T f = sigmoid(x[hidden + j] + r[hidden + j] + bias[hidden + j]);
    const T cand = std::tanh(x[2 * hidden + j] + r[2 * hidden + j] + bias[2 * hidden + j]);
    const T o = sigmoid(x[3 * hidden + j] + r[3 * hidden + j] + bias[3 * hidden + j]);
    g_out[j] = i, g_out[hidden + j] = f, g_out[2 * hidden + j] = cand, g_out[3 * hidden + j] = o;
    c[j] = f * c_prev[j] + i * cand;
    tanh_c[j] = std::tanh(c[j]);
    h[j] = o * tanh_c[j];
  }
}

// One row of the backward step. From dL/dh_t (dh = dh_out + dh_rec: what came through the
// outputs, and back from step t + 1 through W_hh; without dh_rec, dh_out already holds both)
// and dL/dc_t coming back from step t + 1 (dc_io, turned in place into dL/dc_{t-1}), the
// gradient of the gates' pre-activations (dg):
//   dc = dc_io + dh * o * (1 - tanh_c^2)
//   di = dc * g * i (1 - i)       df = dc * c_prev * f (1 - f)
//   dg = dc * i * (1 - g^2)       do = dh * tanh_c * o (1 - o)          dc_io <- dc * f
template <typename T, bool kRecurrent>
void backward_row(const T* dh_out, const T* dh_rec, T* dc_io, const T* g, const T* c_prev, const T* tanh_c, T* dg,
                  int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T i = g[j], f = g[hidden + j], cand = g[2 * hidden + j], o = g[3 * hidden + j];
    const T dh = kRecurrent ? dh_out[j] + dh_rec[j] : dh_out[j];
    const T dc = dc_io[j] + dh * o * (T(1) - tanh_c[j] * tanh_c[j]);
    dg[j] = dc * cand * i * (T(1) - i);
    dg[hidden + j] = dc * c_prev[j] * f * (T(1) - f);
    dg[2 * hidden + j] = dc * i * (T(1) - cand * cand);
    dg[3 * hidden + j] = dh * tanh_c[j] * o * (T(1) - o);
    dc_io[j] = dc * f;
  }
}

// x (N, I) @ weight (O, I)^T, as matmul.linear_nograd makes it. `packed` is what matmul.pack
// made of the weight (matmul.parts): MKL's packed layout (`mkl`) or oneDNN's blocked one, each
// through the same private op as in matmul.py (looked up by name and called boxed: no C++
// signature to keep in step with torch; choice.py checks both ops before choosing one). These
// return a new tensor; without a packed weight, torch's public mm writes into `out` (no allocation).
at::Tensor product(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& packed, bool mkl,
                   at::Tensor& out) {
  if (!packed.has_value()) return at::mm_out(out, x, weight.t());
  torch::jit::Stack stack;
  if (mkl) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkl::_mkl_linear", "");
    stack = {x, *packed, weight, c10::IValue(), x.size(0)};  // no bias; rows the weight was packed for
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(*packed);
  stack.emplace_back(c10::IValue());  // no bias
  stack.emplace_back(std::string("none"));  // no fused activation
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

// dst (N, O) += x (N, I) @ weight (O, I)^T, in place: torch's addmm_ (MKL's gemm with beta = 1)
// adds into dst directly; a packed product is added from its own new tensor.
void add_product_(at::Tensor dst, const at::Tensor& x, const at::Tensor& weight,
                  const std::optional<at::Tensor>& packed, bool mkl) {
  if (!packed.has_value()) {
    dst.addmm_(x, weight.t());
    return;
  }
  at::Tensor unused;
  dst.add_(product(x, weight, packed, mkl, unused));
}

// Checks a (T, B, columns) or (T + 1, B, columns) buffer once, before a loop.
void check_steps(const torch::Tensor& t, const char* name, const torch::Tensor& like, int64_t steps, int64_t columns) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must have the gates' dtype");
  TORCH_CHECK(t.dim() == 3 && t.size(0) == steps && t.size(1) == like.size(1) && t.size(2) == columns, name,
              " has the wrong shape");
}

void check_bias(const torch::Tensor& bias, const torch::Tensor& like, int64_t columns) {
  TORCH_CHECK(bias.is_contiguous() && bias.numel() == columns && bias.scalar_type() == like.scalar_type(),
              "bias_hh must be contiguous, (", columns, ",), of x_proj's dtype");
}

}  // namespace

// The whole forward time loop (LSTMSequence.forward's loop, the products included), so that no
// Python runs between steps. x_proj (T, B, 4H): the input half of the pre-activations (bias_ih
// in); bias_hh (4H); gates (T, B, 4H): the activations out; hs and cs (T + 1, B, H) with hs[0],
// cs[0] set; tanh_cs (T, B, H); weight_hh (4H, H), maybe packed (weight_hh, packed, mkl:
// matmul.parts). b_hh is added in the step's one pass, not in a pass of its own over (T, B, 4H).
void lstm_forward(torch::Tensor x_proj, torch::Tensor bias_hh, torch::Tensor weight_hh,
                  std::optional<torch::Tensor> packed, bool mkl, torch::Tensor gates, torch::Tensor hs,
                  torch::Tensor cs, torch::Tensor tanh_cs) {
  const int64_t steps = x_proj.size(0), batch = x_proj.size(1), hidden = x_proj.size(2) / 4;
  check_steps(x_proj, "x_proj", x_proj, steps, 4 * hidden);
  check_steps(gates, "gates", x_proj, steps, 4 * hidden);
  check_steps(hs, "hs", x_proj, steps + 1, hidden);
  check_steps(cs, "cs", x_proj, steps + 1, hidden);
  check_steps(tanh_cs, "tanh_cs", x_proj, steps, hidden);
  check_bias(bias_hh, x_proj, 4 * hidden);
  const int64_t wide = batch * 4 * hidden, narrow = batch * hidden;  // one step of a (., B, 4H) / (., B, H) buffer
  at::Tensor buffer = at::empty({batch, 4 * hidden}, x_proj.options());  // the public product writes here
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "lstm_forward", [&] {
    const scalar_t *x = x_proj.data_ptr<scalar_t>(), *bias = bias_hh.data_ptr<scalar_t>();
    scalar_t *g = gates.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>();
    scalar_t* tc = tanh_cs.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t) {
      const at::Tensor recurrent = product(hs[t], weight_hh, packed, mkl, buffer);  // (B, 4H)
      TORCH_CHECK(recurrent.is_contiguous(), "the recurrent product must be contiguous");
      const scalar_t* r = recurrent.data_ptr<scalar_t>();
      for_rows(batch, hidden, [&](int64_t b) {
        const int64_t row = b * hidden, k = t * narrow + row;
        forward_row(x + t * wide + 4 * row, r + 4 * row, bias, g + t * wide + 4 * row, c + k, c + narrow + k,
                    tc + k, h + narrow + k, hidden);
      });
    }
  });
}

// The whole backward time loop: grad_h (T, B, H) is dL/dh_t through the outputs, grad_c (B, H)
// dL/dc_T in and dL/dc_0 out; grad_gates (T, B, 4H) is written; weight_t = W_hh^T (H, 4H), maybe
// packed. The recurrent gradient dg_t W_hh: with torch's product, added into grad_h[t - 1] in
// place (addmm_); with a packed one (a new tensor each step), added in step t - 1's one pass.
void lstm_backward(torch::Tensor grad_h, torch::Tensor grad_c, torch::Tensor gates, torch::Tensor cs,
                   torch::Tensor tanh_cs, torch::Tensor grad_gates, torch::Tensor weight_t,
                   std::optional<torch::Tensor> packed_t, bool mkl) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = gates.size(2) / 4;
  check_steps(gates, "gates", gates, steps, 4 * hidden);
  check_steps(grad_gates, "grad_gates", gates, steps, 4 * hidden);
  check_steps(grad_h, "grad_h", gates, steps, hidden);
  check_steps(cs, "cs", gates, steps + 1, hidden);
  check_steps(tanh_cs, "tanh_cs", gates, steps, hidden);
  check(grad_c, "grad_c", gates[0], hidden);
  const int64_t wide = batch * 4 * hidden, narrow = batch * hidden;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_backward", [&] {
    const scalar_t *g = gates.data_ptr<scalar_t>(), *c = cs.data_ptr<scalar_t>(), *tc = tanh_cs.data_ptr<scalar_t>();
    scalar_t *dh = grad_h.data_ptr<scalar_t>(), *dc = grad_c.data_ptr<scalar_t>(), *dg = grad_gates.data_ptr<scalar_t>();
    at::Tensor recurrent;  // dg_{t+1} W_hh from a packed product: none at the last step
    at::Tensor unused;
    for (int64_t t = steps - 1; t >= 0; --t) {
      const scalar_t* rec = recurrent.defined() ? recurrent.data_ptr<scalar_t>() : nullptr;
      for_rows(batch, hidden, [&](int64_t b) {
        const int64_t row = b * hidden, k = t * narrow + row;
        if (rec != nullptr) {
          backward_row<scalar_t, true>(dh + k, rec + row, dc + row, g + t * wide + 4 * row, c + k, tc + k,
                                       dg + t * wide + 4 * row, hidden);
        } else {
          backward_row<scalar_t, false>(dh + k, nullptr, dc + row, g + t * wide + 4 * row, c + k, tc + k,
                                        dg + t * wide + 4 * row, hidden);
        }
      });
      if (t == 0) break;
      if (packed_t.has_value()) {
        recurrent = product(grad_gates[t], weight_t, packed_t, mkl, unused);
        TORCH_CHECK(recurrent.is_contiguous(), "the recurrent product must be contiguous");
      } else {
        grad_h[t - 1].addmm_(grad_gates[t], weight_t.t());  // dh_{t-1} += dg_t W_hh, in place
      }
    }
  });
}

// One row of the GRU's forward step. x (3H): the input half of the pre-activations (bias_ih in);
// p (3H): W_hh h_{t-1}, to which bias_hh (3H) is added. Writes the activated gates r, z, n into
// gates (3H), hn = W_hn h_{t-1} + b_hn (H: what backward needs of the recurrent half) and
//   r = sig(x_r + p_r + b_r)   z = sig(x_z + p_z + b_z)   n = tanh(x_n + r hn)   h = n + z (h_prev - n).
template <typename T>
void gru_forward_row(const T* x, const T* p, const T* bias, const T* h_prev, T* gates, T* hn, T* h, int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T r = sigmoid(x[j] + p[j] + bias[j]), z = sigmoid(x[hidden + j] + p[hidden + j] + bias[hidden + j]);
    const T n_rec = p[2 * hidden + j] + bias[2 * hidden + j];
    const T n = std::tanh(x[2 * hidden + j] + r * n_rec);
    gates[j] = r, gates[hidden + j] = z, gates[2 * hidden + j] = n;
    hn[j] = n_rec;
    h[j] = n + z * (h_prev[j] - n);
  }
}

// One row of the GRU's backward step, from dh = dL/dh_t (complete: through the outputs and
// back from step t + 1). Writes the gradients of the input half (dx, 3H) and of the recurrent
// half (dp = dL/d(W_hh h_{t-1} + b_hh), 3H), and adds the direct part dh z into dh_prev:
//   dn = dh (1 - z)(1 - n^2)    dr = dn hn r (1 - r)    dz = dh (h_prev - n) z (1 - z)
//   dx = (dr, dz, dn)           dp = (dr, dz, dn r)     dh_prev += dh z
template <typename T>
void gru_backward_row(const T* dh, const T* gates, const T* hn, const T* h_prev, T* dx, T* dp, T* dh_prev,
                      int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T r = gates[j], z = gates[hidden + j], n = gates[2 * hidden + j];
    const T dn = dh[j] * (T(1) - z) * (T(1) - n * n);
    const T dr = dn * hn[j] * r * (T(1) - r), dz = dh[j] * (h_prev[j] - n) * z * (T(1) - z);
    dx[j] = dr, dx[hidden + j] = dz, dx[2 * hidden + j] = dn;
    dp[j] = dr, dp[hidden + j] = dz, dp[2 * hidden + j] = dn * r;
    dh_prev[j] += dh[j] * z;
  }
}

// The GRU's whole forward time loop (GRUSequence.forward). x_proj (T, B, 3H); bias_hh (3H);
// hs (T + 1, B, H) with hs[0] set; gates (T, B, 3H) and hn (T, B, H) written; weight_hh (3H, H),
// maybe packed (weight_hh, packed, mkl: matmul.parts).
void gru_forward(torch::Tensor x_proj, torch::Tensor weight_hh, std::optional<torch::Tensor> packed, bool mkl,
                 torch::Tensor bias_hh, torch::Tensor hs, torch::Tensor gates, torch::Tensor hn) {
  const int64_t steps = x_proj.size(0), batch = x_proj.size(1), hidden = x_proj.size(2) / 3;
  check_steps(x_proj, "x_proj", x_proj, steps, 3 * hidden);
  check_steps(gates, "gates", x_proj, steps, 3 * hidden);
  check_steps(hs, "hs", x_proj, steps + 1, hidden);
  check_steps(hn, "hn", x_proj, steps, hidden);
  check_bias(bias_hh, x_proj, 3 * hidden);
  const int64_t wide = batch * 3 * hidden, narrow = batch * hidden;  // one step of a (., B, 3H) / (., B, H) buffer
  at::Tensor buffer = at::empty({batch, 3 * hidden}, x_proj.options());  // the public product writes here
  AT_DISPATCH_FLOATING_TYPES(x_proj.scalar_type(), "gru_forward", [&] {
    const scalar_t *x = x_proj.data_ptr<scalar_t>(), *bias = bias_hh.data_ptr<scalar_t>();
    scalar_t *g = gates.data_ptr<scalar_t>(), *n = hn.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>();
    for (int64_t t = 0; t < steps; ++t) {
      const torch::Tensor recurrent = product(hs[t], weight_hh, packed, mkl, buffer);  // (B, 3H)
      TORCH_CHECK(recurrent.is_contiguous(), "the recurrent product must be contiguous");
      const scalar_t* p = recurrent.data_ptr<scalar_t>();
      for_rows(batch, hidden, [&](int64_t b) {
        const int64_t row = b * hidden;
        gru_forward_row(x + t * wide + 3 * row, p + 3 * row, bias, h + t * narrow + row, g + t * wide + 3 * row,
                        n + t * narrow + row, h + (t + 1) * narrow + row, hidden);
      });
    }
  });
}

// The GRU's whole backward time loop: grad_h (T, B, H) is dL/dh_t through the outputs, and the
// recurrent part is added into it in place as the loop goes back; grad_x (T, B, 3H) and
// grad_p (T, B, 3H) are written; weight_t = W_hh^T (H, 3H), maybe packed. grad_h0 (B, H, zeros
// in) gets dL/dh_0's direct part dh_0 z_0 (the caller adds grad_p[0] W_hh, through the product).
void gru_backward(torch::Tensor grad_h, torch::Tensor gates, torch::Tensor hn, torch::Tensor hs,
                  torch::Tensor grad_x, torch::Tensor grad_p, torch::Tensor weight_t,
                  std::optional<torch::Tensor> packed_t, bool mkl, torch::Tensor grad_h0) {
  const int64_t steps = gates.size(0), batch = gates.size(1), hidden = gates.size(2) / 3;
  check_steps(gates, "gates", gates, steps, 3 * hidden);
  check_steps(grad_x, "grad_x", gates, steps, 3 * hidden);
  check_steps(grad_p, "grad_p", gates, steps, 3 * hidden);
  check_steps(grad_h, "grad_h", gates, steps, hidden);
  check_steps(hn, "hn", gates, steps, hidden);
  check_steps(hs, "hs", gates, steps + 1, hidden);
  check(grad_h0, "grad_h0", gates[0], hidden);
  const int64_t wide = batch * 3 * hidden, narrow = batch * hidden;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gru_backward", [&] {
    const scalar_t *g = gates.data_ptr<scalar_t>(), *n = hn.data_ptr<scalar_t>(), *h = hs.data_ptr<scalar_t>();
    scalar_t *dh = grad_h.data_ptr<scalar_t>(), *dx = grad_x.data_ptr<scalar_t>(), *dp = grad_p.data_ptr<scalar_t>();
    for (int64_t t = steps - 1; t >= 0; --t) {
      scalar_t* dh_prev = t > 0 ? dh + (t - 1) * narrow : grad_h0.data_ptr<scalar_t>();
      for_rows(batch, hidden, [&](int64_t b) {
        const int64_t row = b * hidden;
        gru_backward_row(dh + t * narrow + row, g + t * wide + 3 * row, n + t * narrow + row, h + t * narrow + row,
                         dx + t * wide + 3 * row, dp + t * wide + 3 * row, dh_prev + row, hidden);
      });
      if (t > 0) add_product_(grad_h[t - 1], grad_p[t], weight_t, packed_t, mkl);  // dh_{t-1} += dp_t W_hh, in place
    }
  });
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_forward", &lstm_forward, "LSTM forward over all steps, in place");
  m.def("lstm_backward", &lstm_backward, "LSTM backward over all steps: gate gradients, dL/dc_0 in grad_c");
  m.def("gru_forward", &gru_forward, "GRU forward over all steps, in place");
  m.def("gru_backward", &gru_backward, "GRU backward over all steps: input and recurrent gate gradients");
}
