// DCNv3 core on the CPU: forward and backward in one pass each over the samples.
//
// Built at first use by dcnv3/native/__init__.py (g++ -O3 -fopenmp -ffp-contract=off) and
// called through ctypes; no PyTorch headers, so it compiles in about a second.
//
// Layouts (all contiguous, channels-last, exactly those of dcnv3/ops.py):
//   input   (N, H_in, W_in, G*D)      the channels of group g are [g*D, (g+1)*D)
//   offset  (N, H_out, W_out, G*P*2)  channel g*2P + 2p is dx (width), + 1 is dy (height)
//   mask    (N, H_out, W_out, G*P)    the normalised modulation weight of point p
//   base_x  (W_out, P), base_y (H_out, P): the offset-free sampling locations in InternImage's
//           normalised coordinates, computed by PyTorch with the reference's own operations
//   out, grad_out (N, H_out, W_out, G*D)
//
// Sampling locations use the reference's float arithmetic, operation by operation and in its
// order (the normalised location, then grid_sample's unnormalisation); -ffp-contract=off keeps
// the compiler from fusing any of it into an FMA, so every location and bilinear weight is
// bitwise the one the PyTorch formulations form. Only the order of the final sums differs.
#include <cmath>
#include <cstdint>
#include <vector>

extern "C" {

// Shapes and scalar arguments of one call; mirrored by a ctypes.Structure in __init__.py.
struct Dcnv3Shape {
  int64_t n, in_h, in_w, out_h, out_w, group, group_channels, points;
  double offset_scale, size_w, size_h, pad_w, pad_h;
};

}  // extern "C"

namespace {

// One sample's four bilinear taps: input pixel indices (valid or not) and tap weights.
template <typename T>
struct Sample {
  int64_t x0, y0;
  T lin_x[2], lin_y[2];  // 1-D interpolation weights: (x0 + 1) - x and x - x0
  bool inside_x, inside_y;  // the clamp to [-1, W] x [-1, H] left the coordinate alone
};

template <typename T>
struct Constants {
  T scale, size_w, size_h, half_w, half_h, pad_w, pad_h, high_w, high_h;
  explicit Constants(const Dcnv3Shape& s)
      : scale(static_cast<T>(s.offset_scale)), size_w(static_cast<T>(s.size_w)),
        size_h(static_cast<T>(s.size_h)), half_w(size_w / T(2)), half_h(size_h / T(2)),
        pad_w(static_cast<T>(s.pad_w)), pad_h(static_cast<T>(s.pad_h)),
        high_w(static_cast<T>(s.in_w)), high_h(static_cast<T>(s.in_h)) {}
};

// Unpadded input pixel coordinate of a learned offset, as InternImage forms it:
// loc = base + offset*scale/size (normalised), then grid_sample's ((2*loc - 1) + 1)*size/2 - 0.5,
// minus the pad.
template <typename T>
inline T locate(T learned, T scale, T size, T base, T half, T pad) {
  T v = learned * scale;
  v = v / size;
  v = v + base;
  v = v * T(2);
  v = v - T(1);
  v = v + T(1);
  v = v * half;
  v = v - T(0.5);
  return v - pad;
}

template <typename T>
inline void interpolation(T loc, T high, int64_t* corner, T* lin, bool* inside) {
  T clamped = loc < T(-1) ? T(-1) : loc;
  clamped = clamped > high ? high : clamped;
  *inside = clamped == loc;
  T floor_value = std::floor(clamped);
  *corner = static_cast<int64_t>(floor_value);
  lin[0] = (floor_value + T(1)) - clamped;
  lin[1] = clamped - floor_value;
}

template <typename T>
inline Sample<T> sample_at(const Constants<T>& c, T dx, T dy, T base_x, T base_y) {
  Sample<T> s;
  interpolation(locate(dx, c.scale, c.size_w, base_x, c.half_w, c.pad_w), c.high_w, &s.x0,
                s.lin_x, &s.inside_x);
  interpolation(locate(dy, c.scale, c.size_h, base_y, c.half_h, c.pad_h), c.high_h, &s.y0,
                s.lin_y, &s.inside_y);
  return s;
}

// D is the group's channel count when known at compile time (unrolled, vectorised), else 0.
// Per output row and group, a first loop over the P points forms every sample's four tap
// indices and weights (branch-free, so the compiler vectorises it); a second loop adds the
// taps' channel vectors in the same order as before (taps outside the image read zeros).
template <typename T, int kD>
void forward(const T* input, const T* offset, const T* mask, const T* base_x, const T* base_y,
             T* out, const Dcnv3Shape& s) {
  const Constants<T> c(s);
  const int64_t d_count = kD > 0 ? kD : s.group_channels;
  const int64_t channels = s.group * d_count, points = s.points;
  const int64_t rows = s.n * s.out_h * s.out_w;
  const int64_t in_w = s.in_w, in_h = s.in_h;
  // Scalars in locals, so the vectorised point loop keeps them in registers.
  const T scale = c.scale, size_w = c.size_w, size_h = c.size_h, half_w = c.half_w,
          half_h = c.half_h, pad_w = c.pad_w, pad_h = c.pad_h, high_w = c.high_w, high_h = c.high_h;
  std::vector<T> zeros(d_count, T(0));
  const T* zero = zeros.data();
#pragma omp parallel
  {
    std::vector<int32_t> tap_at(4 * points);  // element offset of each tap in the image, -1 outside
    std::vector<T> tap_weight(4 * points);    // bilinear weight x modulation weight
    int32_t* at = tap_at.data();
    const int32_t width = static_cast<int32_t>(in_w), height = static_cast<int32_t>(in_h);
    const int32_t row_step = static_cast<int32_t>(channels);
    T* tw = tap_weight.data();
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t w = row % s.out_w, h = (row / s.out_w) % s.out_h, n = row / (s.out_w * s.out_h);
      const T* image = input + n * in_h * in_w * channels;
      const T* bx = base_x + w * points;
      const T* by = base_y + h * points;
      for (int64_t g = 0; g < s.group; ++g) {
        const T* off = offset + (row * s.group + g) * points * 2;
        const T* weight = mask + (row * s.group + g) * points;
        const int32_t group_start = static_cast<int32_t>(g * d_count);
#pragma omp simd
        for (int64_t p = 0; p < points; ++p) {
          T x = locate(off[2 * p], scale, size_w, bx[p], half_w, pad_w);
          T y = locate(off[2 * p + 1], scale, size_h, by[p], half_h, pad_h);
          x = x < T(-1) ? T(-1) : x;
          x = x > high_w ? high_w : x;
          y = y < T(-1) ? T(-1) : y;
          y = y > high_h ? high_h : y;
          // floor() by truncation and a correction, which vectorises (std::floor does not here):
          // exact, as the clamp keeps x and y in [-1, size], well inside int32.
          const T tx = static_cast<T>(static_cast<int32_t>(x)), ty = static_cast<T>(static_cast<int32_t>(y));
          const T fx = tx > x ? tx - T(1) : tx, fy = ty > y ? ty - T(1) : ty;
          const int32_t x0 = static_cast<int32_t>(fx), y0 = static_cast<int32_t>(fy);
          const T lx0 = (fx + T(1)) - x, lx1 = x - fx, ly0 = (fy + T(1)) - y, ly1 = y - fy;
          const T m = weight[p];
          tw[p] = (ly0 * lx0) * m;
          tw[points + p] = (ly0 * lx1) * m;
          tw[2 * points + p] = (ly1 * lx0) * m;
          tw[3 * points + p] = (ly1 * lx1) * m;
          // All in int32 (the caller checks H_in * W_in * C < 2^31), one mask width throughout.
          // 0 <= i < n as one unsigned comparison; int32 masks combined with & (no branches).
          const uint32_t w_u = static_cast<uint32_t>(width), h_u = static_cast<uint32_t>(height);
          const int32_t x0_in = static_cast<uint32_t>(x0) < w_u, x1_in = static_cast<uint32_t>(x0 + 1) < w_u;
          const int32_t y0_in = static_cast<uint32_t>(y0) < h_u, y1_in = static_cast<uint32_t>(y0 + 1) < h_u;
          const int32_t corner = (y0 * width + x0) * row_step + group_start;
          at[p] = (y0_in & x0_in) ? corner : -1;
          at[points + p] = (y0_in & x1_in) ? corner + row_step : -1;
          at[2 * points + p] = (y1_in & x0_in) ? corner + width * row_step : -1;
          at[3 * points + p] = (y1_in & x1_in) ? corner + (width + 1) * row_step : -1;
        }
        T acc[kD > 0 ? kD : 1024];
        for (int64_t d = 0; d < d_count; ++d) acc[d] = T(0);
        for (int64_t p = 0; p < points; ++p) {
          for (int t = 0; t < 4; ++t) {
            const int32_t tap = at[t * points + p];
            const T* value = tap >= 0 ? image + tap : zero;
            const T weight_t = tw[t * points + p];
            for (int64_t d = 0; d < d_count; ++d) acc[d] += weight_t * value[d];
          }
        }
        T* target = out + row * channels + g * d_count;
        for (int64_t d = 0; d < d_count; ++d) target[d] = acc[d];
      }
    }
  }
}

// Gradients of all three inputs; grad_input must arrive zeroed and may be null (not needed),
// as may grad_offset and grad_mask together. Work is split over (n, g) pairs: the samples of one
// pair only read and write that image's group-g channels, so no two threads add into the same
// grad_input element.
template <typename T, int kD>
void backward(const T* input, const T* offset, const T* mask, const T* base_x, const T* base_y,
              const T* grad_out, T* grad_input, T* grad_offset, T* grad_mask, const Dcnv3Shape& s) {
  const Constants<T> c(s);
  const int64_t d_count = kD > 0 ? kD : s.group_channels;
  const int64_t channels = s.group * d_count, points = s.points;
  const int64_t pixels_out = s.out_h * s.out_w;
  const int64_t pairs = s.n * s.group;
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t pair = 0; pair < pairs; ++pair) {
    const int64_t n = pair / s.group, g = pair % s.group;
    const T* image = input + n * s.in_h * s.in_w * channels + g * d_count;
    T* grad_image = grad_input ? grad_input + n * s.in_h * s.in_w * channels + g * d_count : nullptr;
    for (int64_t hw = 0; hw < pixels_out; ++hw) {
      const int64_t row = n * pixels_out + hw, h = hw / s.out_w, w = hw % s.out_w;
      const T* upstream = grad_out + row * channels + g * d_count;
      const int64_t sample0 = (row * s.group + g) * points;
      const T* off = offset + sample0 * 2;
      const T* weight = mask + sample0;
      for (int64_t p = 0; p < points; ++p) {
        const Sample<T> smp = sample_at(c, off[2 * p], off[2 * p + 1], base_x[w * points + p],
                                        base_y[h * points + p]);
        T dot[2][2] = {{T(0), T(0)}, {T(0), T(0)}};  // <grad_out, value at tap (ty, tx)>
        for (int ty = 0; ty < 2; ++ty) {
          const int64_t y = smp.y0 + ty;
          if (y < 0 || y >= s.in_h) continue;
          for (int tx = 0; tx < 2; ++tx) {
            const int64_t x = smp.x0 + tx;
            if (x < 0 || x >= s.in_w) continue;
            const int64_t at = (y * s.in_w + x) * channels;
            if (grad_offset) {
              const T* value = image + at;
              T sum = T(0);
              // A sum over channels: let it be vectorised (reassociated), as a BLAS dot would be.
#pragma omp simd reduction(+ : sum)
              for (int64_t d = 0; d < d_count; ++d) sum += upstream[d] * value[d];
              dot[ty][tx] = sum;
            }
            if (grad_image) {
              const T tap = (smp.lin_y[ty] * smp.lin_x[tx]) * weight[p];
              T* target = grad_image + at;
#pragma omp simd  // target (grad_input) never overlaps upstream (grad_out)
              for (int64_t d = 0; d < d_count; ++d) target[d] += tap * upstream[d];
            }
          }
        }
        if (grad_offset) {
          grad_mask[sample0 + p] = smp.lin_y[0] * smp.lin_x[0] * dot[0][0] +
                                   smp.lin_y[0] * smp.lin_x[1] * dot[0][1] +
                                   smp.lin_y[1] * smp.lin_x[0] * dot[1][0] +
                                   smp.lin_y[1] * smp.lin_x[1] * dot[1][1];
          // d bilinear[ty][tx] / dx = lin_y[ty] * (-1 at tx = 0, +1 at tx = 1); d loc / d offset
          // = offset_scale; a clamped coordinate has no gradient.
          const T chain = weight[p] * c.scale;
          const T gx = smp.lin_y[0] * (dot[0][1] - dot[0][0]) + smp.lin_y[1] * (dot[1][1] - dot[1][0]);
          const T gy = smp.lin_x[0] * (dot[1][0] - dot[0][0]) + smp.lin_x[1] * (dot[1][1] - dot[0][1]);
          grad_offset[(sample0 + p) * 2] = smp.inside_x ? gx * chain : T(0);
          grad_offset[(sample0 + p) * 2 + 1] = smp.inside_y ? gy * chain : T(0);
        }
      }
    }
  }
}

template <typename T>
int forward_dispatch(const T* input, const T* offset, const T* mask, const T* base_x,
                     const T* base_y, T* out, const Dcnv3Shape* s) {
  switch (s->group_channels) {
    case 8: forward<T, 8>(input, offset, mask, base_x, base_y, out, *s); return 0;
    case 16: forward<T, 16>(input, offset, mask, base_x, base_y, out, *s); return 0;
    case 32: forward<T, 32>(input, offset, mask, base_x, base_y, out, *s); return 0;
    default:
      if (s->group_channels > 1024) return 1;  // the accumulator lives on the stack
      forward<T, 0>(input, offset, mask, base_x, base_y, out, *s);
      return 0;
  }
}

template <typename T>
int backward_dispatch(const T* input, const T* offset, const T* mask, const T* base_x,
                      const T* base_y, const T* grad_out, T* grad_input, T* grad_offset,
                      T* grad_mask, const Dcnv3Shape* s) {
  switch (s->group_channels) {
    case 8: backward<T, 8>(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset, grad_mask, *s); break;
    case 16: backward<T, 16>(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset, grad_mask, *s); break;
    case 32: backward<T, 32>(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset, grad_mask, *s); break;
    default: backward<T, 0>(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset, grad_mask, *s);
  }
  return 0;
}

// Softmax over each row of ``points`` logits (the P points of one group of one cell):
// (rows, P) contiguous -> (rows, P). Subtracting the row maximum keeps exp in range.
template <typename T>
void softmax_rows(const T* logits, T* out, int64_t rows, int64_t points) {
#pragma omp parallel for schedule(static)
  for (int64_t row = 0; row < rows; ++row) {
    const T* in = logits + row * points;
    T* target = out + row * points;
    T top = in[0];
    for (int64_t p = 1; p < points; ++p) top = in[p] > top ? in[p] : top;
    T total = T(0);
    for (int64_t p = 0; p < points; ++p) {
      target[p] = std::exp(in[p] - top);
      total += target[p];
    }
    for (int64_t p = 0; p < points; ++p) target[p] = target[p] / total;
  }
}

}  // namespace

extern "C" {

// Each returns 0 on success, nonzero when the arguments are outside what the kernel handles.
int dcnv3_forward_f32(const float* input, const float* offset, const float* mask,
                      const float* base_x, const float* base_y, float* out, const Dcnv3Shape* s) {
  return forward_dispatch(input, offset, mask, base_x, base_y, out, s);
}

int dcnv3_forward_f64(const double* input, const double* offset, const double* mask,
                      const double* base_x, const double* base_y, double* out, const Dcnv3Shape* s) {
  return forward_dispatch(input, offset, mask, base_x, base_y, out, s);
}

int dcnv3_backward_f32(const float* input, const float* offset, const float* mask,
                       const float* base_x, const float* base_y, const float* grad_out,
                       float* grad_input, float* grad_offset, float* grad_mask, const Dcnv3Shape* s) {
  return backward_dispatch(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset,
                           grad_mask, s);
}

int dcnv3_backward_f64(const double* input, const double* offset, const double* mask,
                       const double* base_x, const double* base_y, const double* grad_out,
                       double* grad_input, double* grad_offset, double* grad_mask,
                       const Dcnv3Shape* s) {
  return backward_dispatch(input, offset, mask, base_x, base_y, grad_out, grad_input, grad_offset,
                           grad_mask, s);
}

int dcnv3_softmax_f32(const float* logits, float* out, int64_t rows, int64_t points) {
  softmax_rows(logits, out, rows, points);
  return 0;
}

int dcnv3_softmax_f64(const double* logits, double* out, int64_t rows, int64_t points) {
  softmax_rows(logits, out, rows, points);
  return 0;
}

}  // extern "C"
