// One LSTM layer's time loop, forward and backward, with each step's gate math in one pass.
//
// Why C++: in Python a step's gate math is ~8 small torch calls on (B, H) tensors, and at
// B = 32, H = 256 their dispatch costs more than the arithmetic: ~70 us a step, against ~95 us
// for the step's matrix product. Here it is one loop over B x H that the compiler vectorises
// (-O3 -ffast-math lets it use glibc's vector exp/tanh): ~21 us forward, ~6 us backward; and
// the time loop itself runs here too, so no Python runs between steps. The products are the
// ones matmul.py makes (oneDNN on a packed weight). fused.py calls lstm_forward/lstm_backward
// and falls back to the same math in torch ops when this file cannot be compiled.
//
// Layout: every (B, .) slice is contiguous; gates are (B, 4H) in torch.nn's order i, f, g, o.

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

// One row (one sequence of the batch) of the forward step. g (4H): the input half of the
// pre-activations in, to which the recurrent half r (4H) is added; the activations out (i, f,
// g, o: what backward needs); c = f * c_prev + i * g, tanh_c = tanh(c), h = o * tanh_c.
template <typename T>
void forward_row(T* g, const T* r, const T* c_prev, T* c, T* tanh_c, T* h, int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T i = sigmoid(g[j] + r[j]), f = sigmoid(g[hidden + j] + r[hidden + j]);
    const T cand = std::tanh(g[2 * hidden + j] + r[2 * hidden + j]), o = sigmoid(g[3 * hidden + j] + r[3 * hidden + j]);
    g[j] = i, g[hidden + j] = f, g[2 * hidden + j] = cand, g[3 * hidden + j] = o;
    c[j] = f * c_prev[j] + i * cand;
    tanh_c[j] = std::tanh(c[j]);
    h[j] = o * tanh_c[j];
  }
}

// One row of the backward step. From dL/dh_t (dh = dh_out + dh_rec: what came through the
// outputs, and back from step t + 1 through W_hh) and dL/dc_t coming back from step t + 1
// (dc_io, turned in place into dL/dc_{t-1}), the gradient of the gates' pre-activations (dg):
//   dc = dc_io + dh * o * (1 - tanh_c^2)
//   di = dc * g * i (1 - i)       df = dc * c_prev * f (1 - f)
//   dg = dc * i * (1 - g^2)       do = dh * tanh_c * o (1 - o)          dc_io <- dc * f
template <typename T>
void backward_row(const T* dh_out, const T* dh_rec, T* dc_io, const T* g, const T* c_prev, const T* tanh_c, T* dg,
                  int64_t hidden) {
#pragma omp simd
  for (int64_t j = 0; j < hidden; ++j) {
    const T i = g[j], f = g[hidden + j], cand = g[2 * hidden + j], o = g[3 * hidden + j];
    const T dh = dh_out[j] + dh_rec[j];
    const T dc = dc_io[j] + dh * o * (T(1) - tanh_c[j] * tanh_c[j]);
    dg[j] = dc * cand * i * (T(1) - i);
    dg[hidden + j] = dc * c_prev[j] * f * (T(1) - f);
    dg[2 * hidden + j] = dc * i * (T(1) - cand * cand);
    dg[3 * hidden + j] = dh * tanh_c[j] * o * (T(1) - o);
    dc_io[j] = dc * f;
  }
}

// x (N, I) @ weight (O, I)^T. A weight that matmul.pack put in oneDNN's blocked layout goes
// through the same oneDNN op as matmul.linear_nograd (a private op, so it is looked up by name
// and called boxed: no C++ signature to keep in step with torch); any other through at::mm.
at::Tensor product(const at::Tensor& x, const at::Tensor& weight) {
  if (!weight.is_mkldnn()) return at::mm(x, weight.t());
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  torch::jit::Stack stack;
  stack.reserve(6);
  stack.emplace_back(x);
  stack.emplace_back(weight);
  stack.emplace_back(c10::IValue());  // no bias
  stack.emplace_back(std::string("none"));  // no fused activation
  stack.emplace_back(c10::List<std::optional<at::Scalar>>());
  stack.emplace_back(std::string(""));
  op.callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace

// The forward step for the whole batch: gates (B, 4H) += recurrent (B, 4H), then activated
// in place; c, tanh_c, h (B, H) written.
void lstm_step_forward(torch::Tensor gates, torch::Tensor recurrent, torch::Tensor c_prev, torch::Tensor c,
                       torch::Tensor tanh_c, torch::Tensor h) {
  const int64_t batch = gates.size(0), hidden = gates.size(1) / 4;
  check(gates, "gates", gates, 4 * hidden);
  check(recurrent, "recurrent", gates, 4 * hidden);
  for (auto* t : {&c_prev, &c, &tanh_c, &h}) check(*t, "a state tensor", gates, hidden);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_step_forward", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = b * hidden;
      forward_row(gates.data_ptr<scalar_t>() + 4 * row, recurrent.data_ptr<scalar_t>() + 4 * row,
                  c_prev.data_ptr<scalar_t>() + row,
                  c.data_ptr<scalar_t>() + row, tanh_c.data_ptr<scalar_t>() + row, h.data_ptr<scalar_t>() + row,
                  hidden);
    }
  });
}

// The backward step for the whole batch: grad_gates (B, 4H) written, grad_c (B, H) carried back
// in place; dL/dh_t is grad_h + grad_h_recurrent (each (B, H)).
void lstm_step_backward(torch::Tensor grad_h, torch::Tensor grad_h_recurrent, torch::Tensor grad_c,
                        torch::Tensor gates, torch::Tensor c_prev, torch::Tensor tanh_c, torch::Tensor grad_gates) {
  const int64_t batch = gates.size(0), hidden = gates.size(1) / 4;
  check(gates, "gates", gates, 4 * hidden);
  check(grad_gates, "grad_gates", gates, 4 * hidden);
  for (auto* t : {&grad_h, &grad_h_recurrent, &grad_c, &c_prev, &tanh_c}) check(*t, "a state tensor", gates, hidden);
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "lstm_step_backward", [&] {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t row = b * hidden;
      backward_row(grad_h.data_ptr<scalar_t>() + row, grad_h_recurrent.data_ptr<scalar_t>() + row,
                   grad_c.data_ptr<scalar_t>() + row,
                   gates.data_ptr<scalar_t>() + 4 * row, c_prev.data_ptr<scalar_t>() + row,
                   tanh_c.data_ptr<scalar_t>() + row, grad_gates.data_ptr<scalar_t>() + 4 * row, hidden);
    }
  });
}

// The whole forward time loop (LSTMSequence.forward's loop, the products included), so that no
// Python runs between steps. gates (T, B, 4H): the input half in, the activations out; hs and
// cs (T + 1, B, H) with hs[0], cs[0] set; tanh_cs (T, B, H); weight_hh (4H, H), maybe packed.
void lstm_forward(torch::Tensor gates, torch::Tensor weight_hh, torch::Tensor hs, torch::Tensor cs,
                  torch::Tensor tanh_cs) {
  for (int64_t t = 0; t < gates.size(0); ++t) {
    lstm_step_forward(gates[t], product(hs[t], weight_hh), cs[t], cs[t + 1], tanh_cs[t], hs[t + 1]);
  }
}

// The whole backward time loop: grad_h (T, B, H) is dL/dh_t through the outputs, grad_c (B, H)
// dL/dc_T in and dL/dc_0 out; grad_gates (T, B, 4H) is written; weight_t = W_hh^T (H, 4H), maybe packed.
void lstm_backward(torch::Tensor grad_h, torch::Tensor grad_c, torch::Tensor gates, torch::Tensor cs,
                   torch::Tensor tanh_cs, torch::Tensor grad_gates, torch::Tensor weight_t) {
  torch::Tensor grad_h_recurrent = torch::zeros_like(grad_c);  // through step t + 1's W_hh: none at the last step
  for (int64_t t = gates.size(0) - 1; t >= 0; --t) {
    lstm_step_backward(grad_h[t], grad_h_recurrent, grad_c, gates[t], cs[t], tanh_cs[t], grad_gates[t]);
    if (t > 0) grad_h_recurrent = product(grad_gates[t], weight_t);
  }
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("lstm_forward", &lstm_forward, "LSTM forward over all steps, in place");
  m.def("lstm_backward", &lstm_backward, "LSTM backward over all steps: gate gradients, dL/dc_0 in grad_c");
}
