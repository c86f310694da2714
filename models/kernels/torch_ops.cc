// Fused CPU kernels for the torch backend's attentions (models/kernels/torch_ops.py),
// called through ctypes on float32 channels-last tensors, each image's (H x W, C) plane
// contiguous: SimAM whole (three reads of the plane forward, two backward, where eager
// PyTorch makes a dozen activation-sized passes each way) and the channel gates'
// statistics and gradients. Plain C ABI, no PyTorch headers (a build takes a second).
// Every parallel region takes its thread count from the caller (torch.get_num_threads):
// where the process's OpenMP runtime is PyTorch's libgomp the loops share its pool.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// exp(x) for x <= 0 in float32 within 2 ulp (Cephes' expf: x = n ln2 + r, |r| <= ln2 / 2,
// a degree-6 polynomial of r, times 2^n built in the exponent bits), written so that
// GCC vectorizes it inside `omp simd` loops without -ffast-math (libm's expf is
// scalar there) and on the x86-64 baseline (no floor instruction: n is rounded by
// truncating toward zero, which for x <= 0 is a ceiling). Arguments are clamped to
// [-87, 0] (exp(-87) is below 2^-125; sigmoid rounds to 1); NaN gives NaN, and no NaN
// reaches the integer conversion. (-inf gives NaN too; SimAM's argument is never -inf
// for finite x.)
inline float exp_nonpositive(float x) {
  const bool is_nan = x != x;
  const float number = is_nan ? -87.0f : x;
  const float below_zero = number > 0.0f ? 0.0f : number;
  const float clamped = below_zero < -87.0f ? -87.0f : below_zero;
  const float n = static_cast<float>(static_cast<int32_t>(clamped * 1.44269504088896341f - 0.5f));
  float r = clamped - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  // n is in [-126, 0]: the biased exponent n + 127 in [1, 127].
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  // x - x: +0, or NaN for NaN (no select here: GCC 12 would not vectorise the loop).
  return p * scale + (x - x);
}

}  // namespace

extern "C" {

// x, y, weight: images x plane x channels, contiguous (a channels-last NCHW tensor,
// plane = H x W); mean and shifted_variance (the variance over plane - 1, plus
// lambda): images x channels. weight = sigmoid((x - mean)^2 / (4 shifted) + 1/2).
void simam_forward(const float* x, float* y, float* weight, float* mean_out,
                   float* shifted_out, int64_t images, int64_t plane, int64_t channels,
                   double e_lambda, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sum(channels), squares(channels);
    std::vector<float> mean(channels), quarter_inverse(channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      const float* xi = x + start;
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(squares.begin(), squares.end(), 0.0);
      for (int64_t p = 0; p < plane; ++p) {
        const float* row = xi + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) sum[c] += row[c];
      }
      for (int64_t c = 0; c < channels; ++c) mean[c] = static_cast<float>(sum[c] / plane);
      // The deviations' squares from the float mean, as the plain formula computes them.
      for (int64_t p = 0; p < plane; ++p) {
        const float* row = xi + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float u = row[c] - mean[c];
          squares[c] += static_cast<double>(u * u);
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        const double shifted = squares[c] / static_cast<double>(plane - 1) + e_lambda;
        mean_out[n * channels + c] = mean[c];
        shifted_out[n * channels + c] = static_cast<float>(shifted);
        quarter_inverse[c] = static_cast<float>(0.25 / shifted);
      }
      for (int64_t p = 0; p < plane; ++p) {
        const int64_t r = start + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float u = x[r + c] - mean[c];
          const float s = 1.0f / (1.0f + exp_nonpositive(-(u * u * quarter_inverse[c] + 0.5f)));
          weight[r + c] = s;
          y[r + c] = x[r + c] * s;
        }
      }
    }
  }
}

// grad_x from the incoming gradient and the forward's weight, mean and shifted variance
// (the formula in models/pytorch/simam.py's docstring); all laid out as in the forward.
void simam_backward(const float* grad, const float* x, const float* weight, const float* mean_in,
                    const float* shifted_in, float* grad_x, int64_t images, int64_t plane,
                    int64_t channels, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sum_qu(channels), sum_qd(channels);
    std::vector<float> two_k(channels), two_c(channels), offset(channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      const float* mean = mean_in + n * channels;
      const float* shifted = shifted_in + n * channels;
      std::fill(sum_qu.begin(), sum_qu.end(), 0.0);
      std::fill(sum_qd.begin(), sum_qd.end(), 0.0);
      for (int64_t p = 0; p < plane; ++p) {
        const int64_t r = start + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float s = weight[r + c];
          const float q = grad[r + c] * x[r + c] * (s - s * s);
          const float u = x[r + c] - mean[c];
          sum_qu[c] += static_cast<double>(q * u);
          sum_qd[c] += static_cast<double>(q * u * u);
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        const double k = 0.25 / shifted[c];
        const double term = -k * sum_qd[c] / (shifted[c] * static_cast<double>(plane - 1));
        two_k[c] = static_cast<float>(2 * k);
        two_c[c] = static_cast<float>(2 * term);
        offset[c] = static_cast<float>(-2 * k * sum_qu[c] / plane);
      }
      for (int64_t p = 0; p < plane; ++p) {
        const int64_t r = start + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float s = weight[r + c];
          const float g = grad[r + c];
          const float q = g * x[r + c] * (s - s * s);
          const float u = x[r + c] - mean[c];
          grad_x[r + c] = g * s + u * (q * two_k[c] + two_c[c]) + offset[c];
        }
      }
    }
  }
}

// Per image and channel, over the plane: the mean, maximum (with its index: the first
// of tied maxima, the last NaN, as PyTorch's max pooling gives them), sum of squares
// and variance over plane - 1, each written where its pointer is not null. One read of
// x; sums in double about each channel's first value (no cancellation for a large mean).
void channel_statistics(const float* x, int64_t images, int64_t plane, int64_t channels,
                        float* mean_out, float* max_out, int64_t* argmax_out,
                        float* sum_of_squares_out, float* variance_out, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> sum(channels), squares(channels);
    std::vector<float> first(channels), maximum(channels);
    std::vector<int32_t> argmax(channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const float* xi = x + n * plane * channels;
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(squares.begin(), squares.end(), 0.0);
      std::copy(xi, xi + channels, first.begin());
      std::copy(xi, xi + channels, maximum.begin());
      std::fill(argmax.begin(), argmax.end(), 0);
      for (int64_t p = 0; p < plane; ++p) {
        const float* row = xi + p * channels;
        const int32_t index = static_cast<int32_t>(p);
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float value = row[c];
          const double shifted = static_cast<double>(value) - first[c];
          sum[c] += shifted;
          squares[c] += shifted * shifted;
          const bool update = value > maximum[c] || value != value;
          maximum[c] = update ? value : maximum[c];
          argmax[c] = update ? index : argmax[c];
        }
      }
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t at = n * channels + c;
        const double origin = first[c];
        if (mean_out) mean_out[at] = static_cast<float>(origin + sum[c] / plane);
        if (max_out) max_out[at] = maximum[c], argmax_out[at] = argmax[c];
        if (sum_of_squares_out) {
          const double raw = squares[c] + 2 * origin * sum[c] + plane * origin * origin;
          sum_of_squares_out[at] = static_cast<float>(raw);
        }
        if (variance_out) {
          const double centred = std::max(squares[c] - sum[c] * sum[c] / plane, 0.0);
          variance_out[at] = static_cast<float>(centred / static_cast<double>(plane - 1));
        }
      }
    }
  }
}

// sum over the plane of grad * x, per image and channel: the gate's gradient.
void channel_dot(const float* grad, const float* x, int64_t images, int64_t plane,
                 int64_t channels, float* out, int32_t threads) {
#pragma omp parallel num_threads(threads)
  {
    std::vector<double> dot(channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      std::fill(dot.begin(), dot.end(), 0.0);
      for (int64_t p = 0; p < plane; ++p) {
        const int64_t r = start + p * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) dot[c] += static_cast<double>(grad[r + c] * x[r + c]);
      }
      for (int64_t c = 0; c < channels; ++c) out[n * channels + c] = static_cast<float>(dot[c]);
    }
  }
}

// grad_x = grad * gate + x * scale + offset, gate, scale and offset per image and
// channel (scale and offset may be null: zero).
void channel_gate_input_gradient(const float* grad, const float* x, const float* gate,
                                 const float* scale, const float* offset, float* grad_x,
                                 int64_t images, int64_t plane, int64_t channels,
                                 int32_t threads) {
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t n = 0; n < images; ++n) {
    const int64_t start = n * plane * channels;
    const float* g = gate + n * channels;
    const float* a = scale ? scale + n * channels : nullptr;
    const float* b = offset ? offset + n * channels : nullptr;
    for (int64_t p = 0; p < plane; ++p) {
      const int64_t r = start + p * channels;
      if (a && b) {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c)
          grad_x[r + c] = grad[r + c] * g[c] + x[r + c] * a[c] + b[c];
      } else if (a) {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c)
          grad_x[r + c] = grad[r + c] * g[c] + x[r + c] * a[c];
      } else if (b) {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) grad_x[r + c] = grad[r + c] * g[c] + b[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) grad_x[r + c] = grad[r + c] * g[c];
      }
    }
  }
}

}  // extern "C"
