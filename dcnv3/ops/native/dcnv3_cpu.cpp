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

// The scalar arguments of a call in the compute type T, and the sizes the tap loop needs.
template <typename T>
struct Constants {
  T scale, size_w, size_h, half_w, half_h, pad_w, pad_h, high_w, high_h;
  int32_t width, height, row_step;  // input W, H and elements per pixel (C)
  explicit Constants(const Dcnv3Shape& s)
      : scale(static_cast<T>(s.offset_scale)), size_w(static_cast<T>(s.size_w)),
        size_h(static_cast<T>(s.size_h)), half_w(size_w / T(2)), half_h(size_h / T(2)),
        pad_w(static_cast<T>(s.pad_w)), pad_h(static_cast<T>(s.pad_h)),
        high_w(static_cast<T>(s.in_w)), high_h(static_cast<T>(s.in_h)),
        width(static_cast<int32_t>(s.in_w)), height(static_cast<int32_t>(s.in_h)),
        row_step(static_cast<int32_t>(s.group * s.group_channels)) {}
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

// The four bilinear taps of the P samples of one output cell and group, in one branch-free loop
// that g++ vectorises. Outputs, each P long per block:
//   at     [4][P]  element offset of tap (ty, tx) = (0,0), (0,1), (1,0), (1,1) in the image
//                  (from its group's first channel), -1 where the tap lies outside the image;
//   lin    [4][P]  1-D weights lx0 = (x0 + 1) - x, lx1 = x - x0, ly0, ly1;
//   inside [2][P]  1 where the clamp to [-1, W] x [-1, H] left x (then y) alone, else 0;
//   weight [4][P]  tap weight bilinear x modulation, (ly * lx) * mask.
// Offsets are int32: the caller keeps H_in * W_in * C below 2^31. lin and inside are written
// only with kForGradient (the forward needs neither).
template <bool kForGradient, typename T>
inline void form_taps(const Constants<T>& c, const T* off, const T* mask, const T* bx, const T* by,
                      int64_t points, int32_t group_start, int32_t* at, T* lin, T* inside,
                      T* weight) {
  const T scale = c.scale, size_w = c.size_w, size_h = c.size_h, half_w = c.half_w,
          half_h = c.half_h, pad_w = c.pad_w, pad_h = c.pad_h, high_w = c.high_w, high_h = c.high_h;
  const int32_t width = c.width, height = c.height, row_step = c.row_step;
  const uint32_t w_u = static_cast<uint32_t>(width), h_u = static_cast<uint32_t>(height);
#pragma omp simd
  for (int64_t p = 0; p < points; ++p) {
    const T raw_x = locate(off[2 * p], scale, size_w, bx[p], half_w, pad_w);
    const T raw_y = locate(off[2 * p + 1], scale, size_h, by[p], half_h, pad_h);
    T x = raw_x < T(-1) ? T(-1) : raw_x;
    x = x > high_w ? high_w : x;
    T y = raw_y < T(-1) ? T(-1) : raw_y;
    y = y > high_h ? high_h : y;
    if (kForGradient) {
      inside[p] = x == raw_x ? T(1) : T(0);
      inside[points + p] = y == raw_y ? T(1) : T(0);
    }
    // floor() by truncation and a correction, which vectorises (std::floor does not here);
    // exact, as the clamp keeps x and y in [-1, size], well inside int32.
    const T tx = static_cast<T>(static_cast<int32_t>(x)), ty = static_cast<T>(static_cast<int32_t>(y));
    const T fx = tx > x ? tx - T(1) : tx, fy = ty > y ? ty - T(1) : ty;
    const int32_t x0 = static_cast<int32_t>(fx), y0 = static_cast<int32_t>(fy);
    const T lx0 = (fx + T(1)) - x, lx1 = x - fx, ly0 = (fy + T(1)) - y, ly1 = y - fy;
    if (kForGradient) {
      lin[p] = lx0;
      lin[points + p] = lx1;
      lin[2 * points + p] = ly0;
      lin[3 * points + p] = ly1;
    }
    const T m = mask[p];
    weight[p] = (ly0 * lx0) * m;
    weight[points + p] = (ly0 * lx1) * m;
    weight[2 * points + p] = (ly1 * lx0) * m;
    weight[3 * points + p] = (ly1 * lx1) * m;
    // 0 <= i < n as one unsigned comparison; int32 masks combined with & (no branches).
    const int32_t x0_in = static_cast<uint32_t>(x0) < w_u, x1_in = static_cast<uint32_t>(x0 + 1) < w_u;
    const int32_t y0_in = static_cast<uint32_t>(y0) < h_u, y1_in = static_cast<uint32_t>(y0 + 1) < h_u;
    const int32_t corner = (y0 * width + x0) * row_step + group_start;
    at[p] = (y0_in & x0_in) ? corner : -1;
    at[points + p] = (y0_in & x1_in) ? corner + row_step : -1;
    at[2 * points + p] = (y1_in & x0_in) ? corner + width * row_step : -1;
    at[3 * points + p] = (y1_in & x1_in) ? corner + (width + 1) * row_step : -1;
  }
}

// Per-thread scratch for form_taps (and the backward's tap dots) of one cell and group.
template <typename T>
struct Scratch {
  std::vector<int32_t> at;
  std::vector<T> lin, inside, weight, dot;
  explicit Scratch(int64_t points)
      : at(4 * points), lin(4 * points), inside(2 * points), weight(4 * points), dot(4 * points) {}
};

// D is the group's channel count when known at compile time (unrolled, vectorised), else 0.
// Per output cell and group: form_taps, then the taps' channel vectors added point by point,
// taps (0,0), (0,1), (1,0), (1,1) in turn (taps outside the image read zeros).
template <typename T, int kD>
void forward(const T* input, const T* offset, const T* mask, const T* base_x, const T* base_y,
             T* out, const Dcnv3Shape& s) {
  const Constants<T> c(s);
  const int64_t d_count = kD > 0 ? kD : s.group_channels;
  const int64_t channels = s.group * d_count, points = s.points;
  const int64_t rows = s.n * s.out_h * s.out_w;
  std::vector<T> zeros(d_count, T(0));
  const T* zero = zeros.data();
#pragma omp parallel
  {
    Scratch<T> scratch(points);
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t w = row % s.out_w, h = (row / s.out_w) % s.out_h, n = row / (s.out_w * s.out_h);
      const T* image = input + n * s.in_h * s.in_w * channels;
      for (int64_t g = 0; g < s.group; ++g) {
        const int64_t sample0 = (row * s.group + g) * points;
        form_taps<false>(c, offset + sample0 * 2, mask + sample0, base_x + w * points, base_y + h * points,
                  points, static_cast<int32_t>(g * d_count), scratch.at.data(), scratch.lin.data(),
                  scratch.inside.data(), scratch.weight.data());
        T acc[kD > 0 ? kD : 1024];
        for (int64_t d = 0; d < d_count; ++d) acc[d] = T(0);
        for (int64_t p = 0; p < points; ++p) {
          for (int t = 0; t < 4; ++t) {
            const int32_t tap = scratch.at[t * points + p];
            const T* value = tap >= 0 ? image + tap : zero;
            const T weight_t = scratch.weight[t * points + p];
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
#pragma omp parallel
  {
    Scratch<T> scratch(points);
    const int32_t* at = scratch.at.data();
    const T* lin = scratch.lin.data();
    const T* inside = scratch.inside.data();
    const T* tap_weight = scratch.weight.data();
    T* dot = scratch.dot.data();  // [4][P] <grad_out, value at tap t>
#pragma omp for schedule(dynamic, 1)
    for (int64_t pair = 0; pair < pairs; ++pair) {
      const int64_t n = pair / s.group, g = pair % s.group;
      const T* image = input + n * s.in_h * s.in_w * channels;
      T* grad_image = grad_input ? grad_input + n * s.in_h * s.in_w * channels : nullptr;
      for (int64_t hw = 0; hw < pixels_out; ++hw) {
        const int64_t row = n * pixels_out + hw, h = hw / s.out_w, w = hw % s.out_w;
        const T* upstream = grad_out + row * channels + g * d_count;
        const int64_t sample0 = (row * s.group + g) * points;
        const T* weight = mask + sample0;
        form_taps<true>(c, offset + sample0 * 2, weight, base_x + w * points, base_y + h * points,
                  points, static_cast<int32_t>(g * d_count), scratch.at.data(), scratch.lin.data(),
                  scratch.inside.data(), scratch.weight.data());
        for (int64_t q = 0; q < 4 * points; ++q) {
          const int32_t tap = at[q];
          if (tap < 0) {  // outside the image: reads zeros, so no gradient flows either way
            dot[q] = T(0);
            continue;
          }
          if (grad_offset) {
            const T* value = image + tap;
            T sum = T(0);
            // A sum over channels: let it be vectorised (reassociated), as a BLAS dot would be.
#pragma omp simd reduction(+ : sum)
            for (int64_t d = 0; d < d_count; ++d) sum += upstream[d] * value[d];
            dot[q] = sum;
          }
          if (grad_image) {
            const T tap_w = tap_weight[q];
            T* target = grad_image + tap;
#pragma omp simd  // target (grad_input) never overlaps upstream (grad_out)
            for (int64_t d = 0; d < d_count; ++d) target[d] += tap_w * upstream[d];
          }
        }
        if (!grad_offset) continue;
        T* out_mask = grad_mask + sample0;
        T* out_offset = grad_offset + sample0 * 2;
        const T scale = c.scale;
#pragma omp simd
        for (int64_t p = 0; p < points; ++p) {
          const T lx0 = lin[p], lx1 = lin[points + p], ly0 = lin[2 * points + p], ly1 = lin[3 * points + p];
          const T d00 = dot[p], d01 = dot[points + p], d10 = dot[2 * points + p], d11 = dot[3 * points + p];
          out_mask[p] = ly0 * lx0 * d00 + ly0 * lx1 * d01 + ly1 * lx0 * d10 + ly1 * lx1 * d11;
          // d bilinear[ty][tx] / dx = ly[ty] * (-1 at tx = 0, +1 at tx = 1); d loc / d offset
          // = offset_scale; a clamped coordinate has no gradient.
          const T chain = weight[p] * scale;
          const T gx = ly0 * (d01 - d00) + ly1 * (d11 - d10);
          const T gy = lx0 * (d10 - d00) + lx1 * (d11 - d01);
          out_offset[2 * p] = inside[p] * (gx * chain);
          out_offset[2 * p + 1] = inside[points + p] * (gy * chain);
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
      if (s->group_channels > 1024) return 1;  // the accumulator lives on the stack (MAX_GROUP_CHANNELS)
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
