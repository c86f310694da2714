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

}  // extern "C"

namespace {

// The plane is walked in chunks of `rows` consecutive H x W positions, so that the
// inner loops run over rows x channels floats (at least kChunkFloats) rather than
// over one position's few channels (16 in ResNet's first stage: loop overhead would
// dominate); per-channel values are repeated `rows` times to match.
constexpr int64_t kChunkFloats = 128;

int64_t chunk_rows(int64_t channels) {
  return std::max<int64_t>(1, kChunkFloats / channels);
}

template <typename T>
void repeat_channels(const T* values, int64_t channels, int64_t rows, T* repeated) {
  for (int64_t r = 0; r < rows; ++r) std::copy(values, values + channels, repeated + r * channels);
}

// Float sums over at most kFlushRows positions are added into double totals: float
// adds vectorise at full width, and the double totals do not lose precision as the
// plane grows (each shifted value and its square are still rounded to float: about
// 6e-8 x sqrt(plane) of the variance at worst).
constexpr int64_t kFlushRows = 64;

// Whether chunk q (of `rows` positions) ends the float sums' share of kFlushRows.
inline bool flush_after(int64_t q, int64_t rows) { return ((q + 1) * rows) % kFlushRows < rows; }

// Adds copies 1 .. rows - 1 of each channel's total into copy 0.
void fold_copies(int64_t channels, int64_t rows, double* totals) {
  for (int64_t r = 1; r < rows; ++r) {
    for (int64_t c = 0; c < channels; ++c) totals[c] += totals[r * channels + c];
  }
}

template <bool kSums, bool kMax>
void statistics_of_image(const float* __restrict x, int64_t plane, int64_t channels,
                         int64_t rows, float* __restrict first, float* __restrict sum,
                         float* __restrict squares, double* __restrict total,
                         double* __restrict total_squares, float* __restrict maximum,
                         int32_t* __restrict argmax, const int32_t* __restrict row_in_chunk) {
  const int64_t width = rows * channels;
  const int64_t chunks = plane / rows;
  // Shifted by each channel's first value: no cancellation in the variance for a
  // large mean.
  repeat_channels(x, channels, rows, first);
  std::fill(total, total + width, 0.0);
  std::fill(total_squares, total_squares + width, 0.0);
  std::fill(sum, sum + width, 0.0f);
  std::fill(squares, squares + width, 0.0f);
  if (kMax) {
    // Copy r starts at position r itself (or at position 0 where the plane is shorter
    // than a chunk), so that its index is true whatever it keeps: a copy started from
    // position 0 but labelled r would, with a NaN at position 0, win the fold with a
    // wrong (even out-of-plane) index. Position r is read again by the first chunk:
    // not greater than itself, and a NaN takes its own index again.
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t position = r < plane ? r : 0;
      std::copy(x + position * channels, x + (position + 1) * channels, maximum + r * channels);
      std::fill(argmax + r * channels, argmax + (r + 1) * channels, static_cast<int32_t>(position));
    }
  }
  for (int64_t q = 0; q < chunks; ++q) {
    const float* __restrict chunk = x + q * width;
    const int32_t base = static_cast<int32_t>(q * rows);
#pragma omp simd
    for (int64_t i = 0; i < width; ++i) {
      const float value = chunk[i];
      if (kSums) {
        const float shifted = value - first[i];
        sum[i] += shifted;
        squares[i] += shifted * shifted;
      }
      if (kMax) {
        const bool update = value > maximum[i] || value != value;
        maximum[i] = update ? value : maximum[i];
        argmax[i] = update ? base + row_in_chunk[i] : argmax[i];
      }
    }
    if (kSums && flush_after(q, rows)) {
      for (int64_t i = 0; i < width; ++i) {
        total[i] += sum[i], total_squares[i] += squares[i];
        sum[i] = 0.0f, squares[i] = 0.0f;
      }
    }
  }
  for (int64_t i = 0; i < width; ++i) total[i] += sum[i], total_squares[i] += squares[i];
  // The positions after the last whole chunk, into copy 0.
  for (int64_t p = chunks * rows; p < plane; ++p) {
    for (int64_t c = 0; c < channels; ++c) {
      const float value = x[p * channels + c];
      if (kSums) {
        const double shifted = static_cast<double>(value) - first[c];
        total[c] += shifted, total_squares[c] += shifted * shifted;
      }
      if (kMax && (value > maximum[c] || value != value)) {
        maximum[c] = value, argmax[c] = static_cast<int32_t>(p);
      }
    }
  }
}

// Copy r of each channel holds the positions r, r + rows, ... of each chunk: fold the
// copies into copy 0, keeping max pooling's choice (the first of tied maxima, the
// last NaN).
void fold_maximum(int64_t channels, int64_t rows, float* maximum, int32_t* argmax) {
  for (int64_t r = 1; r < rows; ++r) {
    for (int64_t c = 0; c < channels; ++c) {
      const float value = maximum[r * channels + c];
      const int32_t index = argmax[r * channels + c];
      const bool nan = value != value, kept_nan = maximum[c] != maximum[c];
      const bool take = nan ? (!kept_nan || index > argmax[c])
                            : (!kept_nan && (value > maximum[c] ||
                                             (value == maximum[c] && index < argmax[c])));
      if (take) maximum[c] = value, argmax[c] = index;
    }
  }
}

// sum over the plane of grad * x per image and channel; with kRelu, grad masked by a
// ReLU's output first (see relu_masked_channel_dot), the masked gradient written out.
template <bool kRelu>
void channel_dot_of(const float* grad, const float* relu_out, const float* x, int64_t images,
                    int64_t plane, int64_t channels, float* masked, float* out,
                    int32_t threads) {
  const int64_t rows = chunk_rows(channels), width = rows * channels;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> partial(width);
    std::vector<double> total(width);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      const float* __restrict gi = grad + start;
      const float* __restrict ri = kRelu ? relu_out + start : nullptr;
      float* __restrict mi = kRelu ? masked + start : nullptr;
      const float* __restrict xi = x + start;
      float* __restrict sum = partial.data();
      std::fill(total.begin(), total.end(), 0.0);
      std::fill(partial.begin(), partial.end(), 0.0f);
      const int64_t chunks = plane / rows;
      for (int64_t q = 0; q < chunks; ++q) {
        const int64_t o = q * width;
        if constexpr (kRelu) {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) {
            const float g = ri[o + i] <= 0.0f ? 0.0f : gi[o + i];
            mi[o + i] = g;
            sum[i] += g * xi[o + i];
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) sum[i] += gi[o + i] * xi[o + i];
        }
        if (flush_after(q, rows)) {
          for (int64_t i = 0; i < width; ++i) total[i] += sum[i], sum[i] = 0.0f;
        }
      }
      for (int64_t i = 0; i < width; ++i) total[i] += sum[i];
      for (int64_t i = chunks * width; i < plane * channels; ++i) {
        float g = gi[i];
        if constexpr (kRelu) {
          g = ri[i] <= 0.0f ? 0.0f : g;
          mi[i] = g;
        }
        total[i % channels] += static_cast<double>(g) * xi[i];
      }
      fold_copies(channels, rows, total.data());
      for (int64_t c = 0; c < channels; ++c) out[n * channels + c] = static_cast<float>(total[c]);
    }
  }
}


}  // namespace

extern "C" {

// Per image and channel, over the plane: the mean, maximum (with its index: the first
// of tied maxima, the last NaN, as PyTorch's max pooling gives them), sum of squares
// and variance over plane - 1, each written where its pointer is not null. One read of
// x, only the sums or the maximum where only they are asked.
void channel_statistics(const float* x, int64_t images, int64_t plane, int64_t channels,
                        float* mean_out, float* max_out, int64_t* argmax_out,
                        float* sum_of_squares_out, float* variance_out, int32_t threads) {
  const bool sums = mean_out || sum_of_squares_out || variance_out;
  const bool maximum_too = max_out != nullptr;
  const int64_t rows = chunk_rows(channels), width = rows * channels;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> first(width), sum(width), squares(width), maximum(width);
    std::vector<double> total(width), total_squares(width);
    std::vector<int32_t> argmax(width), row_in_chunk(width);
    for (int64_t i = 0; i < width; ++i) row_in_chunk[i] = static_cast<int32_t>(i / channels);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const float* xi = x + n * plane * channels;
      auto* run = sums && maximum_too ? statistics_of_image<true, true>
                  : sums              ? statistics_of_image<true, false>
                                      : statistics_of_image<false, true>;
      run(xi, plane, channels, rows, first.data(), sum.data(), squares.data(), total.data(),
          total_squares.data(), maximum.data(), argmax.data(), row_in_chunk.data());
      // Every copy is shifted by the same first value (the image's first position).
      fold_copies(channels, rows, total.data());
      fold_copies(channels, rows, total_squares.data());
      if (maximum_too) fold_maximum(channels, rows, maximum.data(), argmax.data());
      for (int64_t c = 0; c < channels; ++c) {
        const int64_t at = n * channels + c;
        const double origin = first[c], sum_c = total[c], squares_c = total_squares[c];
        if (mean_out) mean_out[at] = static_cast<float>(origin + sum_c / plane);
        if (max_out) max_out[at] = maximum[c], argmax_out[at] = argmax[c];
        if (sum_of_squares_out) {
          const double raw = squares_c + 2 * origin * sum_c + plane * origin * origin;
          sum_of_squares_out[at] = static_cast<float>(raw);
        }
        if (variance_out) {
          const double centred = std::max(squares_c - sum_c * sum_c / plane, 0.0);
          variance_out[at] = static_cast<float>(centred / static_cast<double>(plane - 1));
        }
      }
    }
  }
}

// sum over the plane of grad * x, per image and channel: the gate's gradient.
void channel_dot(const float* grad, const float* x, int64_t images, int64_t plane,
                 int64_t channels, float* out, int32_t threads) {
  channel_dot_of<false>(grad, nullptr, x, images, plane, channels, nullptr, out, threads);
}

// The same through a ReLU after the gate (the block's end): its gradient first,
// masked = grad where relu_out > 0 else 0 (PyTorch's threshold_backward, which passes a
// NaN output's gradient too), written once, and the sum of masked * x from it.
void relu_masked_channel_dot(const float* grad, const float* relu_out, const float* x,
                             int64_t images, int64_t plane, int64_t channels, float* masked,
                             float* out, int32_t threads) {
  channel_dot_of<true>(grad, relu_out, x, images, plane, channels, masked, out, threads);
}

// grad_x = grad * gate + x * scale + offset, gate, scale and offset per image and
// channel (scale and offset may be null: zero).
void channel_gate_input_gradient(const float* grad, const float* x, const float* gate,
                                 const float* scale, const float* offset, float* grad_x,
                                 int64_t images, int64_t plane, int64_t channels,
                                 int32_t threads) {
  const int64_t rows = chunk_rows(channels), width = rows * channels;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> g(width), a(width, 0.0f), b(width, 0.0f);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      const float* __restrict gi = grad + start;
      const float* __restrict xi = x + start;
      float* __restrict out = grad_x + start;
      repeat_channels(gate + n * channels, channels, rows, g.data());
      if (scale) repeat_channels(scale + n * channels, channels, rows, a.data());
      if (offset) repeat_channels(offset + n * channels, channels, rows, b.data());
      const float* __restrict gr = g.data();
      const float* __restrict ar = a.data();
      const float* __restrict br = b.data();
      const int64_t chunks = plane / rows;
      for (int64_t q = 0; q < chunks; ++q) {
        const int64_t o = q * width;
        if (scale) {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i)
            out[o + i] = gi[o + i] * gr[i] + xi[o + i] * ar[i] + br[i];
        } else {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) out[o + i] = gi[o + i] * gr[i] + br[i];
        }
      }
      for (int64_t i = chunks * width; i < plane * channels; ++i) {
        const int64_t c = i % channels;
        // Without a scale, x is not read (an infinite x must not turn into NaN here).
        out[i] = gi[i] * gr[c] + br[c] + (scale ? xi[i] * ar[c] : 0.0f);
      }
    }
  }
}

// out = x * gate + shortcut, then max(out, 0) where relu (NaN stays NaN, as PyTorch's
// ReLU keeps it): a residual block's end after a channel gate in one write, where eager
// PyTorch writes the product, the sum and the ReLU's output one pass each. The product
// is rounded before the sum (no fused multiply-add), as PyTorch's two operators round
// it, so that the fused block end gives the very same numbers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
void gated_residual(const float* x, const float* gate, const float* shortcut, float* out,
                    int64_t images, int64_t plane, int64_t channels, int32_t relu,
                    int32_t threads) {
#ifdef __clang__
#pragma clang fp contract(off)
#endif
  const int64_t rows = chunk_rows(channels), width = rows * channels;
#pragma omp parallel num_threads(threads)
  {
    std::vector<float> g(width);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < images; ++n) {
      const int64_t start = n * plane * channels;
      const float* __restrict xi = x + start;
      const float* __restrict si = shortcut + start;
      float* __restrict oi = out + start;
      repeat_channels(gate + n * channels, channels, rows, g.data());
      const float* __restrict gr = g.data();
      const int64_t chunks = plane / rows;
      for (int64_t q = 0; q < chunks; ++q) {
        const int64_t o = q * width;
        if (relu) {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) {
            const float value = xi[o + i] * gr[i] + si[o + i];
            oi[o + i] = value < 0.0f ? 0.0f : value;
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < width; ++i) oi[o + i] = xi[o + i] * gr[i] + si[o + i];
        }
      }
      for (int64_t i = chunks * width; i < plane * channels; ++i) {
        const float value = xi[i] * gr[i % channels] + si[i];
        oi[i] = relu && value < 0.0f ? 0.0f : value;
      }
    }
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

}  // extern "C"
