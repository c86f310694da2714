// Fused CPU kernels for the spatial work around every channel attention.
//
// Why they exist: with MXNet's own operators, pooling a residual branch over
// H x W and scaling each channel by its gate costs about fifteen passes over
// the branch's activations per training step (reshapes out of oneDNN's blocked
// layout, a materialised (N*C, H*W) gate, an element-wise product and its
// backward, the gradient of the pooling as a second full tensor). Here each
// operator is one pass forward and one backward.
//
// Every tensor is viewed as rows of length L = H*W (one row per image and
// channel); the per-channel tensors are (N, C), one value per row.
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;
using Attributes = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

namespace {

MXReturnValue two_inputs(const Attributes&, int* inputs, int* outputs) {
  *inputs = 2;
  *outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue one_input(const Attributes&, int* inputs, int* outputs) {
  *inputs = 1;
  *outputs = 1;
  return MX_SUCCESS;
}

MXReturnValue float32_only(const Attributes&, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != kFloat32) {
      MX_ERROR_MSG << "the fused channel kernels take float32 tensors only; "
                      "set CHANNEL_ATTENTION_FUSED=0 to use MXNet's operators";
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

bool is_channel_tensor(const std::vector<unsigned int>& x) { return x.size() >= 3; }

MXReturnValue per_channel_shape(const Attributes&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  if (!is_channel_tensor(x)) {
    MX_ERROR_MSG << "expected a tensor (N, C, spatial...), got " << x.size() << " axes";
    return MX_FAIL;
  }
  (*out)[0] = {x[0], x[1]};
  return MX_SUCCESS;
}

MXReturnValue scale_shape(const Attributes&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  const auto& weights = (*in)[1];
  if (!is_channel_tensor(x) || weights.size() != 2 || weights[0] != x[0] ||
      weights[1] != x[1]) {
    MX_ERROR_MSG << "channel_scale expects x (N, C, spatial...) and weights (N, C)";
    return MX_FAIL;
  }
  (*out)[0] = x;
  return MX_SUCCESS;
}

struct Rows {
  int64_t count, length;
};

Rows rows_of(const MXTensor& full, const MXTensor& per_channel) {
  const int64_t count = per_channel.size();
  return {count, count ? full.size() / count : 0};
}

// out[r] = (sum over i of term(x[r, i])) / divisor
template <typename Term>
void reduce_rows(const float* x, float* out, Rows rows, float divisor, Term term) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows.count; ++r) {
    const float* x_row = x + r * rows.length;
    float sum = 0.f;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < rows.length; ++i) sum += term(x_row[i]);
    out[r] = sum / divisor;
  }
}

// out[r, i] = element(x[r, i], per_row[r])
template <typename Element>
void map_rows(const float* x, const float* per_row, float* out, Rows rows, Element element) {
#pragma omp parallel for
  for (int64_t r = 0; r < rows.count; ++r) {
    const float value = per_row[r];
    const float* x_row = x + r * rows.length;
    float* out_row = out + r * rows.length;
#pragma omp simd
    for (int64_t i = 0; i < rows.length; ++i) out_row[i] = element(x_row[i], value);
  }
}

// y[r, :] = x[r, :] * weights[r]
MXReturnValue scale_forward(const Attributes&, std::vector<MXTensor>* in,
                            std::vector<MXTensor>* out, const OpResource&) {
  map_rows(in->at(0).data<float>(), in->at(1).data<float>(), out->at(0).data<float>(),
           rows_of(in->at(0), in->at(1)), [](float x, float w) { return x * w; });
  return MX_SUCCESS;
}

// inputs: dy, x, weights (then y); outputs: dx = dy * w, dweights[r] = <dy[r, :], x[r, :]>.
// One pass for both gradients: that is the point of fusing.
MXReturnValue scale_backward(const Attributes&, std::vector<MXTensor>* in,
                             std::vector<MXTensor>* out, const OpResource&) {
  const float* dy = in->at(0).data<float>();
  const float* x = in->at(1).data<float>();
  const float* weights = in->at(2).data<float>();
  float* dx = out->at(0).data<float>();
  float* dweights = out->at(1).data<float>();
  const Rows rows = rows_of(in->at(1), in->at(2));
#pragma omp parallel for
  for (int64_t r = 0; r < rows.count; ++r) {
    const float w = weights[r];
    const float* dy_row = dy + r * rows.length;
    const float* x_row = x + r * rows.length;
    float* dx_row = dx + r * rows.length;
    float dot = 0.f;
#pragma omp simd reduction(+ : dot)
    for (int64_t i = 0; i < rows.length; ++i) {
      dx_row[i] = dy_row[i] * w;
      dot += dy_row[i] * x_row[i];
    }
    dweights[r] = dot;
  }
  return MX_SUCCESS;
}

// means[r] = mean of x[r, :]
MXReturnValue mean_forward(const Attributes&, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  const Rows rows = rows_of(in->at(0), out->at(0));
  reduce_rows(in->at(0).data<float>(), out->at(0).data<float>(), rows,
              static_cast<float>(rows.length), [](float x) { return x; });
  return MX_SUCCESS;
}

// inputs: dmeans, x (then means); outputs: dx[r, :] = dmeans[r] / L
MXReturnValue mean_backward(const Attributes&, std::vector<MXTensor>* in,
                            std::vector<MXTensor>* out, const OpResource&) {
  const float* dmeans = in->at(0).data<float>();
  float* dx = out->at(0).data<float>();
  const Rows rows = rows_of(out->at(0), in->at(0));
#pragma omp parallel for
  for (int64_t r = 0; r < rows.count; ++r) {
    const float share = dmeans[r] / static_cast<float>(rows.length);
    float* dx_row = dx + r * rows.length;
#pragma omp simd
    for (int64_t i = 0; i < rows.length; ++i) dx_row[i] = share;
  }
  return MX_SUCCESS;
}

// sums[r] = sum of x[r, :]^2
MXReturnValue sum_of_squares_forward(const Attributes&, std::vector<MXTensor>* in,
                                     std::vector<MXTensor>* out, const OpResource&) {
  reduce_rows(in->at(0).data<float>(), out->at(0).data<float>(),
              rows_of(in->at(0), out->at(0)), 1.f, [](float x) { return x * x; });
  return MX_SUCCESS;
}

// inputs: dsums, x (then sums); outputs: dx = 2 * dsums[r] * x
MXReturnValue sum_of_squares_backward(const Attributes&, std::vector<MXTensor>* in,
                                      std::vector<MXTensor>* out, const OpResource&) {
  map_rows(in->at(1).data<float>(), in->at(0).data<float>(), out->at(0).data<float>(),
           rows_of(in->at(1), in->at(0)), [](float x, float g) { return 2.f * g * x; });
  return MX_SUCCESS;
}

}  // namespace

REGISTER_OP(cab_channel_scale)
    .setParseAttrs(two_inputs)
    .setInferType(float32_only)
    .setInferShape(scale_shape)
    .setForward(scale_forward, "cpu")
    .setBackward(scale_backward, "cpu");

REGISTER_OP(cab_channel_mean)
    .setParseAttrs(one_input)
    .setInferType(float32_only)
    .setInferShape(per_channel_shape)
    .setForward(mean_forward, "cpu")
    .setBackward(mean_backward, "cpu");

REGISTER_OP(cab_channel_sum_of_squares)
    .setParseAttrs(one_input)
    .setInferType(float32_only)
    .setInferShape(per_channel_shape)
    .setForward(sum_of_squares_forward, "cpu")
    .setBackward(sum_of_squares_backward, "cpu");

MXReturnValue initialize(int version) {
  // The custom-operator interface with backward passes is MXNet 1.7 and later.
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}
