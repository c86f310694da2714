// Fused CPU kernels: each channel attention as one operator, forward and backward.
//
// Why they exist: with MXNet's own operators, pooling a residual branch over
// H x W and scaling each channel by its gate costs about fifteen passes over
// the branch's activations per training step (reshapes out of oneDNN's blocked
// layout, a materialised (N*C, H*W) gate, an element-wise product and its
// backward, the gradient of the pooling as a second full tensor, their sum).
// Even as separate fused pooling and scaling operators they cost five: the
// pooling and the scaling each read the activations forward, and backward the
// pooling's gradient is a second full tensor that MXNet then adds to the
// scaling's.
//
// Here an attention is one operator that works image by image: it pools the
// image's channels, computes their gates (the attention's core: SE's two dense
// layers, ECA's k-tap convolution across channels, GCT's normalisation), and
// scales the channels while the image is still in the core's cache. Forward
// reads the activations once and writes the output; backward reads the output
// gradient and the activations once and writes the input gradient. The
// per-image parameter gradients are summed in image order afterwards, so the
// result does not depend on the number of threads.
//
// Every tensor is (N, C, spatial...): per image, C rows of length L (the
// product of the spatial sizes). The per-channel arithmetic runs in double: it
// is C values per image, and it keeps the gates as exact as the float32 inputs
// allow.
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <unordered_map>
#include <vector>

#include "mxnet/lib_api.h"

using namespace mxnet::ext;
using Attributes = std::unordered_map<std::string, std::string>;
using Shapes = std::vector<std::vector<unsigned int>>;

namespace {

// ---------------------------------------------------------------- row passes

// Which statistic of its channel each attention pools: the mean (SE, ECA) or the
// sum of squares (GCT).
enum class Pool { kMean, kSumOfSquares };

// The sums run in double: a float32 sum of squares overflows once a row's values pass
// about 1e18 (a 56-layer network with random weights gets there), long before the
// statistic itself or anything computed from it leaves float32's range, and a float
// sum loses the small terms of a long row.
template <Pool pool>
double row_statistic(const float* x, int64_t length) {
  double sum = 0.0;
  if (pool == Pool::kMean) {
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < length; ++i) sum += static_cast<double>(x[i]);
    return sum / static_cast<double>(length);
  }
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < length; ++i) {
    const double value = static_cast<double>(x[i]);
    sum += value * value;
  }
  return sum;
}

// The statistic and <dy, x> (the gradient of the channel's gate) in one pass.
template <Pool pool>
void row_statistic_and_dot(const float* x, const float* dy, int64_t length, double* statistic,
                           double* dot) {
  double sum = 0.0, product = 0.0;
#pragma omp simd reduction(+ : sum, product)
  for (int64_t i = 0; i < length; ++i) {
    const double value = static_cast<double>(x[i]);
    sum += pool == Pool::kMean ? value : value * value;
    product += static_cast<double>(dy[i]) * value;
  }
  *statistic = pool == Pool::kMean ? sum / static_cast<double>(length) : sum;
  *dot = product;
}

void scale_row(const float* x, float gate, int64_t length, float* y) {
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) y[i] = x[i] * gate;
}

// dx = dy * gate + d(statistic)/dx * dstatistic: the mean spreads its gradient
// evenly over the row, the sum of squares as 2 x.
template <Pool pool>
void row_gradient(const float* dy, const float* x, float gate, double dstatistic,
                  int64_t length, float* dx) {
  if (pool == Pool::kMean) {
    const float share = static_cast<float>(dstatistic / static_cast<double>(length));
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) dx[i] = dy[i] * gate + share;
    return;
  }
  const float twice = static_cast<float>(2.0 * dstatistic);
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) dx[i] = dy[i] * gate + twice * x[i];
}

double sigmoid(double z) { return 1.0 / (1.0 + std::exp(-z)); }

// ---------------------------------------------------------------- the cores
//
// A core maps an image's C pooled statistics to C gates. Its interface:
//   kPool, parameter_sizes(), scratch_size(),
//   forward(statistics, gates, scratch),
//   backward(statistics, dgates, gates, dstatistics, dparameters, scratch):
//     from the statistics and the gates' gradients, the gates again, the
//     statistics' gradients and this image's parameter gradients (laid out as
//     the parameters are, one after another);
//   parameter_sizes(): the element count of each parameter input, in order.

// Squeeze-and-excitation: gates = sigmoid(W2 relu(W1 mean)), W1 (H, C), W2 (C, H),
// the weights of Gluon's Dense layers (units, in_units).
struct SqueezeExcitation {
  static constexpr Pool kPool = Pool::kMean;
  const float* squeeze;   // (hidden, channels)
  const float* excite;    // (channels, hidden)
  int64_t channels, hidden;

  std::vector<int64_t> parameter_sizes() const {
    return {channels * hidden, channels * hidden};
  }
  int64_t scratch_size() const { return 2 * hidden; }

  // scratch[0, hidden): the squeezed pre-activations.
  void squeeze_forward(const double* pooled, double* squeezed) const {
    for (int64_t j = 0; j < hidden; ++j) {
      double sum = 0.0;
      for (int64_t c = 0; c < channels; ++c) sum += squeeze[j * channels + c] * pooled[c];
      squeezed[j] = sum;
    }
  }

  double excited(const double* squeezed, int64_t c) const {
    double sum = 0.0;
    for (int64_t j = 0; j < hidden; ++j)
      sum += excite[c * hidden + j] * (squeezed[j] > 0.0 ? squeezed[j] : 0.0);
    return sum;
  }

  void forward(const double* pooled, double* gates, double* scratch) const {
    squeeze_forward(pooled, scratch);
    for (int64_t c = 0; c < channels; ++c) gates[c] = sigmoid(excited(scratch, c));
  }

  void backward(const double* pooled, const double* dgates, double* gates, double* dpooled,
                double* dparameters, double* scratch) const {
    double* squeezed = scratch;
    double* dhidden = scratch + hidden;
    squeeze_forward(pooled, squeezed);
    double* dsqueeze = dparameters;
    double* dexcite = dparameters + channels * hidden;
    for (int64_t j = 0; j < hidden; ++j) dhidden[j] = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      gates[c] = sigmoid(excited(squeezed, c));
      const double dz = dgates[c] * gates[c] * (1.0 - gates[c]);
      for (int64_t j = 0; j < hidden; ++j) {
        const double activation = squeezed[j] > 0.0 ? squeezed[j] : 0.0;
        dexcite[c * hidden + j] = dz * activation;
        dhidden[j] += excite[c * hidden + j] * dz;
      }
    }
    for (int64_t c = 0; c < channels; ++c) dpooled[c] = 0.0;
    for (int64_t j = 0; j < hidden; ++j) {
      const double dsqueezed = squeezed[j] > 0.0 ? dhidden[j] : 0.0;
      for (int64_t c = 0; c < channels; ++c) {
        dsqueeze[j * channels + c] = dsqueezed * pooled[c];
        dpooled[c] += squeeze[j * channels + c] * dsqueezed;
      }
    }
  }
};

// Efficient channel attention: gates = sigmoid(w * mean), a k-tap cross-correlation
// across the channels with zero padding (Conv1D, one channel, pad k/2, no bias).
struct EfficientChannel {
  static constexpr Pool kPool = Pool::kMean;
  const float* weight;    // (k)
  int64_t channels, taps;

  std::vector<int64_t> parameter_sizes() const { return {taps}; }
  int64_t scratch_size() const { return 0; }

  // The input channel that tap j of output channel c reads, or -1 in the padding.
  int64_t source(int64_t c, int64_t j) const {
    const int64_t s = c + j - taps / 2;
    return s >= 0 && s < channels ? s : -1;
  }

  double mixed(const double* pooled, int64_t c) const {
    double sum = 0.0;
    for (int64_t j = 0; j < taps; ++j) {
      const int64_t s = source(c, j);
      if (s >= 0) sum += weight[j] * pooled[s];
    }
    return sum;
  }

  void forward(const double* pooled, double* gates, double*) const {
    for (int64_t c = 0; c < channels; ++c) gates[c] = sigmoid(mixed(pooled, c));
  }

  void backward(const double* pooled, const double* dgates, double* gates, double* dpooled,
                double* dweight, double*) const {
    for (int64_t j = 0; j < taps; ++j) dweight[j] = 0.0;
    for (int64_t c = 0; c < channels; ++c) dpooled[c] = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      gates[c] = sigmoid(mixed(pooled, c));
      const double dz = dgates[c] * gates[c] * (1.0 - gates[c]);
      for (int64_t j = 0; j < taps; ++j) {
        const int64_t s = source(c, j);
        if (s < 0) continue;
        dweight[j] += dz * pooled[s];
        dpooled[s] += weight[j] * dz;
      }
    }
  }
};

// Gated channel transformation, from the sums of squares s:
//   e = alpha sqrt(s + eps), t = gamma e / sqrt(mean over channels of e^2 + eps) + beta,
//   gates = 1 + tanh(t).
struct GatedChannelTransformation {
  static constexpr Pool kPool = Pool::kSumOfSquares;
  const float *alpha, *gamma, *beta;   // (C) each
  int64_t channels;
  double epsilon;

  std::vector<int64_t> parameter_sizes() const { return {channels, channels, channels}; }
  int64_t scratch_size() const { return 2 * channels; }

  // scratch: the embeddings e, then the tanh of t; returns 1 / sqrt(mean e^2 + eps).
  double embed(const double* squares, double* embedding, double* tanh_t) const {
    double mean_square = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      embedding[c] = alpha[c] * std::sqrt(squares[c] + epsilon);
      mean_square += embedding[c] * embedding[c];
    }
    const double inverse_norm = 1.0 / std::sqrt(mean_square / channels + epsilon);
    for (int64_t c = 0; c < channels; ++c)
      tanh_t[c] = std::tanh(gamma[c] * embedding[c] * inverse_norm + beta[c]);
    return inverse_norm;
  }

  void forward(const double* squares, double* gates, double* scratch) const {
    double* tanh_t = scratch + channels;
    embed(squares, scratch, tanh_t);
    for (int64_t c = 0; c < channels; ++c) gates[c] = 1.0 + tanh_t[c];
  }

  void backward(const double* squares, const double* dgates, double* gates, double* dsquares,
                double* dparameters, double* scratch) const {
    double* embedding = scratch;
    double* tanh_t = scratch + channels;
    const double r = embed(squares, embedding, tanh_t);
    double* dalpha = dparameters;
    double* dgamma = dparameters + channels;
    double* dbeta = dparameters + 2 * channels;
    // t_c = gamma_c e_c r + beta_c with r = (mean e^2 + eps)^(-1/2), so
    // dt_c/de_c' = gamma_c r [c = c'] - gamma_c e_c r^3 e_c' / C.
    double coupling = 0.0;
    for (int64_t c = 0; c < channels; ++c) {
      gates[c] = 1.0 + tanh_t[c];
      const double dt = dgates[c] * (1.0 - tanh_t[c] * tanh_t[c]);
      dbeta[c] = dt;
      dgamma[c] = dt * embedding[c] * r;
      dsquares[c] = dt;     // dt, kept until the coupling is known
      coupling += dt * gamma[c] * embedding[c];
    }
    const double shared = coupling * r * r * r / channels;
    for (int64_t c = 0; c < channels; ++c) {
      const double dembedding = dsquares[c] * gamma[c] * r - shared * embedding[c];
      const double root = std::sqrt(squares[c] + epsilon);
      dalpha[c] = dembedding * root;
      dsquares[c] = dembedding * alpha[c] / (2.0 * root);
    }
  }
};

// ---------------------------------------------------------------- the drivers

struct Layout {
  int64_t images, channels, length;
};

Layout layout_of(const MXTensor& x) {
  const int64_t images = x.shape[0], channels = x.shape[1];
  return {images, channels, images * channels > 0 ? x.size() / (images * channels) : 0};
}

template <typename Core>
void attention_forward(const Core& core, const float* x, float* y, Layout shape) {
  const int64_t C = shape.channels, L = shape.length;
#pragma omp parallel
  {
    std::vector<double> statistics(C), gates(C), scratch(core.scratch_size());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < shape.images; ++n) {
      const float* image = x + n * C * L;
      for (int64_t c = 0; c < C; ++c)
        statistics[c] = row_statistic<Core::kPool>(image + c * L, L);
      core.forward(statistics.data(), gates.data(), scratch.data());
      // The image was just read: its rows are still in this core's cache.
      for (int64_t c = 0; c < C; ++c)
        scale_row(image + c * L, static_cast<float>(gates[c]), L, y + (n * C + c) * L);
    }
  }
}

// gradients: where each parameter's gradient goes, in the core's parameter order.
template <typename Core>
void attention_backward(const Core& core, const float* dy, const float* x, float* dx,
                        const std::vector<float*>& gradients, Layout shape) {
  const std::vector<int64_t> sizes = core.parameter_sizes();
  const int64_t C = shape.channels, L = shape.length;
  const int64_t P = std::accumulate(sizes.begin(), sizes.end(), int64_t{0});
  std::vector<double> per_image(shape.images * P), totals(P);
#pragma omp parallel
  {
    std::vector<double> statistics(C), dgates(C), gates(C), dstatistics(C);
    std::vector<double> scratch(core.scratch_size());
#pragma omp for schedule(static)
    for (int64_t n = 0; n < shape.images; ++n) {
      const int64_t offset = n * C * L;
      for (int64_t c = 0; c < C; ++c)
        row_statistic_and_dot<Core::kPool>(x + offset + c * L, dy + offset + c * L, L,
                                           &statistics[c], &dgates[c]);
      core.backward(statistics.data(), dgates.data(), gates.data(), dstatistics.data(),
                    per_image.data() + n * P, scratch.data());
      for (int64_t c = 0; c < C; ++c)
        row_gradient<Core::kPool>(dy + offset + c * L, x + offset + c * L,
                                  static_cast<float>(gates[c]), dstatistics[c], L,
                                  dx + offset + c * L);
    }
    // In image order whatever the threads: the same sums on every run.
#pragma omp for schedule(static)
    for (int64_t p = 0; p < P; ++p) {
      double sum = 0.0;
      for (int64_t n = 0; n < shape.images; ++n) sum += per_image[n * P + p];
      totals[p] = sum;
    }
  }
  int64_t next = 0;
  for (size_t k = 0; k < sizes.size(); ++k)
    for (int64_t i = 0; i < sizes[k]; ++i) gradients[k][i] = static_cast<float>(totals[next++]);
}

// ---------------------------------------------------------------- MXNet glue

bool is_channel_tensor(const std::vector<unsigned int>& x) { return x.size() >= 3; }

int64_t elements(const std::vector<unsigned int>& shape) {
  int64_t count = 1;
  for (unsigned int d : shape) count *= d;
  return count;
}

MXReturnValue float32_only(const Attributes&, std::vector<int>* in_types,
                           std::vector<int>* out_types) {
  for (int type : *in_types) {
    if (type != kFloat32) {
      MX_ERROR_MSG << "the fused channel-attention kernels take float32 tensors only; "
                      "set CHANNEL_ATTENTION_FUSED=0 to use MXNet's operators";
      return MX_FAIL;
    }
  }
  (*out_types)[0] = kFloat32;
  return MX_SUCCESS;
}

template <int inputs>
MXReturnValue inputs_and_one_output(const Attributes&, int* num_in, int* num_out) {
  *num_in = inputs;
  *num_out = 1;
  return MX_SUCCESS;
}

// Checks x (N, C, spatial...) and that each parameter input has the element count
// `expected(C)` returns, in order; the output is shaped as x.
template <typename Expected>
MXReturnValue check_shapes(const char* op, const char* parameters, Shapes* in, Shapes* out,
                           Expected expected) {
  const auto& x = (*in)[0];
  bool fits = is_channel_tensor(x);
  if (fits) {
    const std::vector<int64_t> sizes = expected(static_cast<int64_t>(x[1]), *in);
    for (size_t k = 0; k < sizes.size(); ++k)
      fits = fits && sizes[k] >= 0 && elements((*in)[k + 1]) == sizes[k];
  }
  if (!fits) {
    MX_ERROR_MSG << op << " expects x (N, C, spatial...) and " << parameters;
    return MX_FAIL;
  }
  (*out)[0] = x;
  return MX_SUCCESS;
}

MXReturnValue se_shape(const Attributes&, Shapes* in, Shapes* out) {
  return check_shapes("cab_se", "squeeze weights (H, C), excite weights (C, H)", in, out,
                      [](int64_t C, const Shapes& shapes) -> std::vector<int64_t> {
                        const auto& squeeze = shapes[1];
                        const auto& excite = shapes[2];
                        if (squeeze.size() != 2 || excite.size() != 2 || squeeze[1] != C ||
                            excite[0] != C || excite[1] != squeeze[0])
                          return {-1, -1};
                        return {elements(squeeze), elements(excite)};
                      });
}

MXReturnValue eca_shape(const Attributes&, Shapes* in, Shapes* out) {
  return check_shapes("cab_eca", "an odd number k of convolution weights", in, out,
                      [](int64_t, const Shapes& shapes) -> std::vector<int64_t> {
                        const int64_t taps = elements(shapes[1]);
                        return {taps % 2 == 1 ? taps : -1};
                      });
}

MXReturnValue gct_shape(const Attributes&, Shapes* in, Shapes* out) {
  return check_shapes("cab_gct", "alpha, gamma, beta of C values each", in, out,
                      [](int64_t C, const Shapes&) -> std::vector<int64_t> {
                        return {C, C, C};
                      });
}

// The cores read their parameters from the inputs that follow x, at `x_index` (0 in
// the forward inputs, 1 in the backward's, after the output gradient).
SqueezeExcitation se_core(const Attributes&, std::vector<MXTensor>& in, int x_index) {
  MXTensor& squeeze = in[x_index + 1];
  return {squeeze.data<float>(), in[x_index + 2].data<float>(), squeeze.shape[1],
          squeeze.shape[0]};
}

EfficientChannel eca_core(const Attributes&, std::vector<MXTensor>& in, int x_index) {
  MXTensor& weight = in[x_index + 1];
  return {weight.data<float>(), in[x_index].shape[1], weight.size()};
}

GatedChannelTransformation gct_core(const Attributes& attributes, std::vector<MXTensor>& in,
                                    int x_index) {
  return {in[x_index + 1].data<float>(), in[x_index + 2].data<float>(),
          in[x_index + 3].data<float>(), in[x_index].shape[1],
          std::stod(attributes.at("epsilon"))};
}

// One direction of one operator in MXNet's signature, from the core's maker.
// Forward inputs: x, parameters...; backward inputs: dy, x, parameters... (then y),
// backward outputs: dx, the parameters' gradients.
template <typename Core, Core (*make)(const Attributes&, std::vector<MXTensor>&, int)>
MXReturnValue forward_of(const Attributes& attributes, std::vector<MXTensor>* in,
                         std::vector<MXTensor>* out, const OpResource&) {
  attention_forward(make(attributes, *in, 0), in->at(0).data<float>(),
                    out->at(0).data<float>(), layout_of(in->at(0)));
  return MX_SUCCESS;
}

template <typename Core, Core (*make)(const Attributes&, std::vector<MXTensor>&, int)>
MXReturnValue backward_of(const Attributes& attributes, std::vector<MXTensor>* in,
                          std::vector<MXTensor>* out, const OpResource&) {
  std::vector<float*> gradients;
  for (size_t k = 1; k < out->size(); ++k) gradients.push_back(out->at(k).data<float>());
  attention_backward(make(attributes, *in, 1), in->at(0).data<float>(),
                     in->at(1).data<float>(), out->at(0).data<float>(), gradients,
                     layout_of(in->at(1)));
  return MX_SUCCESS;
}

constexpr auto se_forward = forward_of<SqueezeExcitation, se_core>;
constexpr auto se_backward = backward_of<SqueezeExcitation, se_core>;
constexpr auto eca_forward = forward_of<EfficientChannel, eca_core>;
constexpr auto eca_backward = backward_of<EfficientChannel, eca_core>;
constexpr auto gct_forward = forward_of<GatedChannelTransformation, gct_core>;
constexpr auto gct_backward = backward_of<GatedChannelTransformation, gct_core>;

MXReturnValue gct_attributes(const Attributes& attributes, int* num_in, int* num_out) {
  if (!attributes.count("epsilon")) {
    MX_ERROR_MSG << "cab_gct needs its epsilon attribute";
    return MX_FAIL;
  }
  return inputs_and_one_output<4>(attributes, num_in, num_out);
}

// ---------------------------------------------------------------- the head's pooling

// means (N, C) of x (N, C, spatial...): the networks' global average pool.
MXReturnValue mean_shape(const Attributes&, Shapes* in, Shapes* out) {
  const auto& x = (*in)[0];
  if (!is_channel_tensor(x)) {
    MX_ERROR_MSG << "cab_channel_mean expects a tensor (N, C, spatial...), got " << x.size()
                 << " axes";
    return MX_FAIL;
  }
  (*out)[0] = {x[0], x[1]};
  return MX_SUCCESS;
}

MXReturnValue mean_forward(const Attributes&, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  const Layout shape = layout_of(in->at(0));
  const float* x = in->at(0).data<float>();
  float* means = out->at(0).data<float>();
#pragma omp parallel for
  for (int64_t r = 0; r < shape.images * shape.channels; ++r)
    means[r] = static_cast<float>(row_statistic<Pool::kMean>(x + r * shape.length, shape.length));
  return MX_SUCCESS;
}

// inputs: dmeans, x (then means); output: dx[r, :] = dmeans[r] / L.
MXReturnValue mean_backward(const Attributes&, std::vector<MXTensor>* in,
                            std::vector<MXTensor>* out, const OpResource&) {
  const Layout shape = layout_of(in->at(1));
  const float* dmeans = in->at(0).data<float>();
  float* dx = out->at(0).data<float>();
#pragma omp parallel for
  for (int64_t r = 0; r < shape.images * shape.channels; ++r) {
    const float share = dmeans[r] / static_cast<float>(shape.length);
    float* row = dx + r * shape.length;
#pragma omp simd
    for (int64_t i = 0; i < shape.length; ++i) row[i] = share;
  }
  return MX_SUCCESS;
}

// ---------------------------------------------------------------- a probe

// y = x, dx = dy: no arithmetic, only what MXNet does around any extension operator
// (converting oneDNN's blocked layouts to the plain one it hands over, and back).
// `bench.benchmark --kernels-compare` puts it where each attention sits, to measure
// the floor under every fused attention.
MXReturnValue same_shape(const Attributes&, Shapes* in, Shapes* out) {
  (*out)[0] = (*in)[0];
  return MX_SUCCESS;
}

void copy_tensor(MXTensor& from, MXTensor& to) {
  const float* source = from.data<float>();
  float* target = to.data<float>();
  const int64_t count = from.size();
#pragma omp parallel for simd
  for (int64_t i = 0; i < count; ++i) target[i] = source[i];
}

MXReturnValue copy_forward(const Attributes&, std::vector<MXTensor>* in,
                           std::vector<MXTensor>* out, const OpResource&) {
  copy_tensor(in->at(0), out->at(0));
  return MX_SUCCESS;
}

MXReturnValue copy_backward(const Attributes&, std::vector<MXTensor>* in,
                            std::vector<MXTensor>* out, const OpResource&) {
  copy_tensor(in->at(0), out->at(0));
  return MX_SUCCESS;
}

}  // namespace

// Every operator here: float32 tensors, on the CPU, with a backward pass.
#define REGISTER_CPU_OP(name, attributes, shape, forward, backward)                     \
  REGISTER_OP(name).setParseAttrs(attributes).setInferType(float32_only)                \
      .setInferShape(shape).setForward(forward, "cpu").setBackward(backward, "cpu")

REGISTER_CPU_OP(cab_se, inputs_and_one_output<3>, se_shape, se_forward, se_backward);
REGISTER_CPU_OP(cab_eca, inputs_and_one_output<2>, eca_shape, eca_forward, eca_backward);
REGISTER_CPU_OP(cab_gct, gct_attributes, gct_shape, gct_forward, gct_backward);
REGISTER_CPU_OP(cab_channel_mean, inputs_and_one_output<1>, mean_shape, mean_forward,
                mean_backward);
REGISTER_CPU_OP(cab_copy, inputs_and_one_output<1>, same_shape, copy_forward, copy_backward);

MXReturnValue initialize(int version) {
  // The custom-operator interface with backward passes is MXNet 1.7 and later.
  return version >= 10700 ? MX_SUCCESS : MX_FAIL;
}
