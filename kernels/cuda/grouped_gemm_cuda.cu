// kernels/cuda/grouped_gemm_cuda.cu — expert GEMMs over device-side row ranges (see grouped_gemm_cuda.h).
// One kernel template per path (bf16 WMMA, fp32 SIMT), each instantiated for three problem shapes:
//   forward  C[M_e, Nout] = A[M_e, K] · B,   A = X (K-contiguous),   B(k, n) = W_e[n, k]
//   dgrad    C[M_e, K]    = A[M_e, Nout] · B, A = dY (Nout-contig.), B(k, n) = W_e[k, n]
//   wgrad    C[Nout, K]  += A[Nout, M_e] · B, A(m, k) = dY[k, m],    B(k, n) = X[k, n]
// Operand tiles are copied to shared memory in their global contiguity (coalesced loads, zero fill
// outside the problem), and the WMMA fragments are loaded row- or column-major to match.
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

#include "kernels/cuda/bf16_device.cuh"
#include "kernels/cuda/cuda_check.h"
#include "kernels/cuda/grouped_gemm_cuda.h"

namespace moeasr {
namespace {

enum class Mode { kForward, kDgrad, kWgrad };

template <class T>
struct GemmArgs {
  const T* a;  // global A, rows indexed absolutely (permuted rows)
  int64_t lda;
  const T* b;  // expert 0's B; expert e at b + e * b_expert_stride
  int64_t ldb;
  int64_t b_expert_stride;
  void* c;  // T* (forward, dgrad) or float* (wgrad); expert e at c + e * c_expert_stride
  int64_t ldc;
  int64_t c_expert_stride;
  const T* bias;  // forward only, [E, n_size] or null
  const int64_t* offsets;
  int64_t n_experts;
  int64_t m_size;     // wgrad: rows of C (Nout)
  int64_t n_size;     // columns of C
  int64_t k_size;     // forward, dgrad: reduction length
  bool vec_a, vec_b;  // 16-byte loads allowed (leading dim and base pointer aligned)
};

// V consecutive elements of T moved as one 16-byte load/store.
template <class T, int V>
struct alignas(16) Pack {
  T v[V];
};

// One operand tile of S x C elements, g[(s0 + s) * ld + c0 + c] for s < S, c < C, zero outside
// s < s_lim, c < c_lim (absolute limits), staged in registers: fetch() issues the global loads (threads
// walk the contiguous dimension: coalesced), store() writes them to smem[s * (C + PAD) + c]. The kernels
// fetch k-tile t+1 before computing k-tile t, so the loads are in flight during the math.
template <class T, int S, int C, int THREADS>
struct TileLoader {
  static constexpr int V = 16 / sizeof(T);
  static constexpr int CV = C / V;
  static constexpr int N = S * CV / THREADS;  // 16-byte chunks per thread
  static_assert(C % V == 0, "tile width must hold whole 16-byte vectors");
  static_assert((S * CV) % THREADS == 0, "every thread moves the same number of chunks");
  Pack<T, V> regs[N];

  __device__ __forceinline__ void fetch(const T* g, int64_t ld, int64_t s0, int64_t s_lim, int64_t c0,
                                        int64_t c_lim, bool vec_ok) {
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const int idx = threadIdx.x + q * THREADS;
      const int64_t gs = s0 + idx / CV, gc = c0 + (idx % CV) * V;
      if (vec_ok && gs < s_lim && gc + V <= c_lim) {
        regs[q] = *reinterpret_cast<const Pack<T, V>*>(g + gs * ld + gc);
      } else {
#pragma unroll
        for (int v = 0; v < V; ++v) {
          regs[q].v[v] = (gs < s_lim && gc + v < c_lim) ? g[gs * ld + gc + v] : store_as<T>(0.0f);
        }
      }
    }
  }

  template <int PAD>
  __device__ __forceinline__ void store(T* smem) const {
    static_assert(((C + PAD) * sizeof(T)) % 16 == 0, "padded rows must stay 16-byte aligned");
#pragma unroll
    for (int q = 0; q < N; ++q) {
      const int idx = threadIdx.x + q * THREADS;
      *reinterpret_cast<Pack<T, V>*>(smem + (idx / CV) * (C + PAD) + (idx % CV) * V) = regs[q];
    }
  }
};

// The A and B loaders of one kernel configuration: A is [TM x TK] k-contiguous or [TK x TM]
// m-contiguous, B is [TN x TK] k-contiguous or [TK x TN] n-contiguous.
template <class T, int TM, int TN, int TK, int THREADS, bool kAKMajor, bool kBKMajor>
struct OperandLoaders {
  std::conditional_t<kAKMajor, TileLoader<T, TM, TK, THREADS>, TileLoader<T, TK, TM, THREADS>> a;
  std::conditional_t<kBKMajor, TileLoader<T, TN, TK, THREADS>, TileLoader<T, TK, TN, THREADS>> b;

  template <class TileT, class Args>
  __device__ __forceinline__ void fetch(const Args& g, const T* a_ptr, const T* b_ptr, const TileT& t,
                                        int64_t kt) {
    if constexpr (kAKMajor) {
      a.fetch(a_ptr, g.lda, t.m0, t.m_lim, kt, t.k_end, g.vec_a);
    } else {
      a.fetch(a_ptr, g.lda, kt, t.k_end, t.m0, t.m_lim, g.vec_a);
    }
    if constexpr (kBKMajor) {
      b.fetch(b_ptr, g.ldb, t.n0, t.n_lim, kt, t.k_end, g.vec_b);
    } else {
      b.fetch(b_ptr, g.ldb, kt, t.k_end, t.n0, t.n_lim, g.vec_b);
    }
  }
  template <int PAD>
  __device__ __forceinline__ void store(T* s_a, T* s_b) const {
    a.template store<PAD>(s_a);
    b.template store<PAD>(s_b);
  }
};

// Problem coordinates of this block; false when the block has no work (past the real row tiles, or an
// expert without rows in wgrad). Must be called by all threads (it synchronises).
struct Tile {
  int64_t e, m0, m_lim, n0, n_lim, k_begin, k_end;
};

template <Mode MODE, int TM, int TN, class T>
__device__ __forceinline__ bool map_block(const GemmArgs<T>& g, Tile* t, int64_t* s_info) {
  if constexpr (MODE == Mode::kWgrad) {
    t->e = blockIdx.z;
    t->m0 = int64_t(blockIdx.y) * TM;
    t->m_lim = g.m_size;
    t->n0 = int64_t(blockIdx.x) * TN;
    t->n_lim = g.n_size;
    t->k_begin = g.offsets[t->e];
    t->k_end = g.offsets[t->e + 1];
    return t->k_begin < t->k_end;
  } else {
    // The tile list: expert e owns ceil(M_e / TM) consecutive row tiles.
    if (threadIdx.x == 0) {
      const int64_t tile = blockIdx.x;
      int64_t before = 0;
      s_info[0] = -1;
      s_info[1] = 0;
      for (int64_t e = 0; e < g.n_experts; ++e) {
        const int64_t rows = g.offsets[e + 1] - g.offsets[e];
        const int64_t tiles = rows > 0 ? (rows + TM - 1) / TM : 0;
        if (tile < before + tiles) {
          s_info[0] = e;
          s_info[1] = tile - before;
          break;
        }
        before += tiles;
      }
    }
    __syncthreads();
    if (s_info[0] < 0) return false;
    t->e = s_info[0];
    t->m0 = g.offsets[t->e] + s_info[1] * TM;
    t->m_lim = g.offsets[t->e + 1];
    t->n0 = int64_t(blockIdx.y) * TN;
    t->n_lim = g.n_size;
    t->k_begin = 0;
    t->k_end = g.k_size;
    return true;
  }
}

template <Mode MODE, class T>
__device__ __forceinline__ void store_out(const GemmArgs<T>& g, int64_t e, int64_t row, int64_t col,
                                          float v) {
  if constexpr (MODE == Mode::kWgrad) {
    float* c = static_cast<float*>(g.c) + e * g.c_expert_stride + row * g.ldc + col;
    *c += v;
  } else {
    if constexpr (MODE == Mode::kForward) {
      if (g.bias != nullptr) v += load_f32(g.bias[e * g.n_size + col]);
    }
    static_cast<T*>(g.c)[row * g.ldc + col] = store_as<T>(v);
  }
}

// ---- bf16 tensor-core path ----
constexpr int kWmmaTM = 128, kWmmaTN = 128, kWmmaTK = 32, kWmmaThreads = 256, kWmmaPad = 8;

template <Mode MODE>
__global__ void __launch_bounds__(kWmmaThreads) wmma_gemm_kernel(GemmArgs<__nv_bfloat16> g) {
  using T = __nv_bfloat16;
  namespace wmma = nvcuda::wmma;
  constexpr int TM = kWmmaTM, TN = kWmmaTN, TK = kWmmaTK, PAD = kWmmaPad, THREADS = kWmmaThreads;
  constexpr bool kAKMajor = MODE != Mode::kWgrad;    // A contiguous along k
  constexpr bool kBKMajor = MODE == Mode::kForward;  // B contiguous along k
  constexpr int kALd = kAKMajor ? TK + PAD : TM + PAD;
  constexpr int kBLd = kBKMajor ? TK + PAD : TN + PAD;
  __shared__ __align__(128) T s_a[kAKMajor ? TM * (TK + PAD) : TK * (TM + PAD)];
  __shared__ __align__(128) T s_b[kBKMajor ? TN * (TK + PAD) : TK * (TN + PAD)];
  __shared__ __align__(128) float s_stage[(THREADS / 32) * 256];
  __shared__ int64_t s_info[2];

  Tile t;
  if (!map_block<MODE, TM, TN>(g, &t, s_info)) return;
  const T* a = g.a;
  const T* b = g.b + t.e * g.b_expert_stride;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int wm = warp / 4, wn = warp % 4;  // 2 x 4 warps, 64 x 32 outputs each
  using LayoutA = std::conditional_t<kAKMajor, wmma::row_major, wmma::col_major>;
  using LayoutB = std::conditional_t<kBKMajor, wmma::col_major, wmma::row_major>;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[4][2];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);

  OperandLoaders<T, TM, TN, TK, THREADS, kAKMajor, kBKMajor> loaders;
  if (t.k_begin < t.k_end) loaders.fetch(g, a, b, t, t.k_begin);
  for (int64_t kt = t.k_begin; kt < t.k_end; kt += TK) {
    __syncthreads();  // the previous k-tile's math is done with s_a / s_b
    loaders.template store<PAD>(s_a, s_b);
    __syncthreads();
    if (kt + TK < t.k_end) loaders.fetch(g, a, b, t, kt + TK);  // next k-tile, in flight during the math
#pragma unroll
    for (int kk = 0; kk < TK; kk += 16) {
      wmma::fragment<wmma::matrix_a, 16, 16, 16, T, LayoutA> fa[4];
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, LayoutB> fb[2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = wm * 64 + i * 16;
        const T* p = kAKMajor ? s_a + m * kALd + kk : s_a + kk * kALd + m;
        wmma::load_matrix_sync(fa[i], p, kALd);
      }
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const int n = wn * 32 + j * 16;
        const T* p = kBKMajor ? s_b + n * kBLd + kk : s_b + kk * kBLd + n;
        wmma::load_matrix_sync(fb[j], p, kBLd);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
    }
  }

  // Epilogue: each warp stages one 16x16 accumulator at a time and writes the in-range elements.
  float* stage = s_stage + warp * 256;
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      wmma::store_matrix_sync(stage, acc[i][j], 16, wmma::mem_row_major);
      __syncwarp();
      for (int q = lane; q < 256; q += 32) {
        const int64_t row = t.m0 + wm * 64 + i * 16 + q / 16;
        const int64_t col = t.n0 + wn * 32 + j * 16 + q % 16;
        if (row < t.m_lim && col < t.n_lim) store_out<MODE>(g, t.e, row, col, stage[q]);
      }
      __syncwarp();
    }
  }
}

// ---- fp32 SIMT path ----
constexpr int kSimtTM = 64, kSimtTN = 64, kSimtTK = 16, kSimtThreads = 256, kSimtPad = 4;

template <Mode MODE, class T>
__global__ void __launch_bounds__(kSimtThreads) simt_gemm_kernel(GemmArgs<T> g) {
  constexpr int TM = kSimtTM, TN = kSimtTN, TK = kSimtTK, PAD = kSimtPad, THREADS = kSimtThreads;
  constexpr bool kAKMajor = MODE != Mode::kWgrad;
  constexpr bool kBKMajor = MODE == Mode::kForward;
  __shared__ __align__(16) T s_a[kAKMajor ? TM * (TK + PAD) : TK * (TM + PAD)];
  __shared__ __align__(16) T s_b[kBKMajor ? TN * (TK + PAD) : TK * (TN + PAD)];
  __shared__ int64_t s_info[2];

  Tile t;
  if (!map_block<MODE, TM, TN>(g, &t, s_info)) return;
  const T* a = g.a;
  const T* b = g.b + t.e * g.b_expert_stride;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // outputs (ty + 16 i, tx + 16 j)

  float acc[4][4];
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

  OperandLoaders<T, TM, TN, TK, THREADS, kAKMajor, kBKMajor> loaders;
  if (t.k_begin < t.k_end) loaders.fetch(g, a, b, t, t.k_begin);
  for (int64_t kt = t.k_begin; kt < t.k_end; kt += TK) {
    __syncthreads();  // the previous k-tile's math is done with s_a / s_b
    loaders.template store<PAD>(s_a, s_b);
    __syncthreads();
    if (kt + TK < t.k_end) loaders.fetch(g, a, b, t, kt + TK);  // next k-tile, in flight during the math
#pragma unroll
    for (int kk = 0; kk < TK; ++kk) {
      float av[4], bv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int m = ty + 16 * i;
        av[i] = load_f32(kAKMajor ? s_a[m * (TK + PAD) + kk] : s_a[kk * (TM + PAD) + m]);
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int n = tx + 16 * j;
        bv[j] = load_f32(kBKMajor ? s_b[n * (TK + PAD) + kk] : s_b[kk * (TN + PAD) + n]);
      }
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
    }
  }

#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t row = t.m0 + ty + 16 * i;
      const int64_t col = t.n0 + tx + 16 * j;
      if (row < t.m_lim && col < t.n_lim) store_out<MODE>(g, t.e, row, col, acc[i][j]);
    }
  }
}

// dbias[e, col] += sum over the expert's rows of dy[row, col]: 32 columns x 32 row groups per block,
// the 32 partial sums added in a fixed order.
template <class T>
__global__ void bias_grad_kernel(float* dbias, const T* dy, const int64_t* offsets, int64_t n_out) {
  __shared__ float s_part[32][33];
  const int64_t e = blockIdx.y;
  const int64_t col = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t begin = offsets[e], end = offsets[e + 1];
  float acc = 0.0f;
  if (col < n_out) {
    for (int64_t row = begin + threadIdx.y; row < end; row += 32) acc += load_f32(dy[row * n_out + col]);
  }
  s_part[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < n_out) {
    float total = 0.0f;
    for (int r = 0; r < 32; ++r) total += s_part[r][threadIdx.x];
    dbias[e * n_out + col] += total;
  }
}

bool vec_ok(const void* p, int64_t ld, int64_t elem_bytes) {
  return reinterpret_cast<uintptr_t>(p) % 16 == 0 && (ld * elem_bytes) % 16 == 0;
}

template <class T>
void launch(Mode mode, const GemmArgs<T>& g, dim3 grid, cudaStream_t stream) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    switch (mode) {
      case Mode::kForward: wmma_gemm_kernel<Mode::kForward><<<grid, kWmmaThreads, 0, stream>>>(g); break;
      case Mode::kDgrad: wmma_gemm_kernel<Mode::kDgrad><<<grid, kWmmaThreads, 0, stream>>>(g); break;
      case Mode::kWgrad: wmma_gemm_kernel<Mode::kWgrad><<<grid, kWmmaThreads, 0, stream>>>(g); break;
    }
  } else {
    switch (mode) {
      case Mode::kForward: simt_gemm_kernel<Mode::kForward, T><<<grid, kSimtThreads, 0, stream>>>(g); break;
      case Mode::kDgrad: simt_gemm_kernel<Mode::kDgrad, T><<<grid, kSimtThreads, 0, stream>>>(g); break;
      case Mode::kWgrad: simt_gemm_kernel<Mode::kWgrad, T><<<grid, kSimtThreads, 0, stream>>>(g); break;
    }
  }
  CUDA_CHECK(cudaGetLastError());
}

template <class T>
constexpr int64_t tile_m() {
  return std::is_same_v<T, __nv_bfloat16> ? kWmmaTM : kSimtTM;
}
template <class T>
constexpr int64_t tile_n() {
  return std::is_same_v<T, __nv_bfloat16> ? kWmmaTN : kSimtTN;
}

int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

void check_sizes(int64_t m_max, int64_t n_experts, int64_t in_features, int64_t out_features) {
  CHECK(m_max >= 0 && n_experts >= 1 && n_experts <= 65535 && in_features >= 0 && out_features >= 0)
      << "grouped gemm (cuda) sizes M_max=" << m_max << " E=" << n_experts << " K=" << in_features
      << " Nout=" << out_features;
}

// The row-tile list of forward and dgrad: at most ceil(m_max / TM) + E tiles.
template <class T>
dim3 row_tile_grid(int64_t m_max, int64_t n_experts, int64_t cols) {
  const int64_t tiles = ceil_div(m_max, tile_m<T>()) + n_experts;
  const int64_t col_tiles = ceil_div(cols, tile_n<T>());
  CHECK(tiles < (int64_t{1} << 31) && col_tiles <= 65535) << "grouped gemm (cuda): grid too large";
  return dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(col_tiles), 1);
}

}  // namespace

template <class T>
void grouped_gemm_forward_cuda(T* y, const T* x, const T* weight, const T* bias,
                               const int64_t* expert_offsets, int64_t m_max, int64_t n_experts,
                               int64_t in_features, int64_t out_features, const RunContext& ctx) {
  check_sizes(m_max, n_experts, in_features, out_features);
  if (m_max == 0 || out_features == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  GemmArgs<T> g{};
  g.a = x;
  g.lda = in_features;
  g.b = weight;
  g.ldb = in_features;
  g.b_expert_stride = out_features * in_features;
  g.c = y;
  g.ldc = out_features;
  g.c_expert_stride = 0;
  g.bias = bias;
  g.offsets = expert_offsets;
  g.n_experts = n_experts;
  g.m_size = 0;
  g.n_size = out_features;
  g.k_size = in_features;
  g.vec_a = vec_ok(x, in_features, sizeof(T));
  g.vec_b = vec_ok(weight, in_features, sizeof(T));
  launch(Mode::kForward, g, row_tile_grid<T>(m_max, n_experts, out_features), stream);
}

template <class T>
void grouped_gemm_backward_cuda(T* dx, float* dweight, float* dbias, const T* dy, const T* x, const T* weight,
                                const int64_t* expert_offsets, int64_t m_max, int64_t n_experts,
                                int64_t in_features, int64_t out_features, const RunContext& ctx) {
  check_sizes(m_max, n_experts, in_features, out_features);
  if (m_max == 0) return;
  cudaStream_t stream = static_cast<cudaStream_t>(ctx.cuda_stream);
  if (dx != nullptr && in_features > 0) {
    // dX[M_e, K] = dY[M_e, Nout] · W_e[Nout, K]
    GemmArgs<T> g{};
    g.a = dy;
    g.lda = out_features;
    g.b = weight;
    g.ldb = in_features;
    g.b_expert_stride = out_features * in_features;
    g.c = dx;
    g.ldc = in_features;
    g.c_expert_stride = 0;
    g.bias = nullptr;
    g.offsets = expert_offsets;
    g.n_experts = n_experts;
    g.m_size = 0;
    g.n_size = in_features;
    g.k_size = out_features;
    g.vec_a = vec_ok(dy, out_features, sizeof(T));
    g.vec_b = vec_ok(weight, in_features, sizeof(T));
    launch(Mode::kDgrad, g, row_tile_grid<T>(m_max, n_experts, in_features), stream);
  }
  if (dweight != nullptr && in_features > 0 && out_features > 0) {
    // dW_e[Nout, K] += dY_e^T · X_e, one block per (K tile, Nout tile, expert).
    GemmArgs<T> g{};
    g.a = dy;
    g.lda = out_features;
    g.b = x;
    g.ldb = in_features;
    g.b_expert_stride = 0;
    g.c = dweight;
    g.ldc = in_features;
    g.c_expert_stride = out_features * in_features;
    g.bias = nullptr;
    g.offsets = expert_offsets;
    g.n_experts = n_experts;
    g.m_size = out_features;
    g.n_size = in_features;
    g.k_size = 0;
    g.vec_a = vec_ok(dy, out_features, sizeof(T));
    g.vec_b = vec_ok(x, in_features, sizeof(T));
    const int64_t n_tiles = ceil_div(in_features, tile_n<T>());
    const int64_t m_tiles = ceil_div(out_features, tile_m<T>());
    CHECK(n_tiles < (int64_t{1} << 31) && m_tiles <= 65535) << "grouped gemm (cuda): dW grid too large";
    launch(Mode::kWgrad, g,
           dim3(static_cast<unsigned>(n_tiles), static_cast<unsigned>(m_tiles),
                static_cast<unsigned>(n_experts)),
           stream);
  }
  if (dbias != nullptr && out_features > 0) {
    const int64_t col_blocks = ceil_div(out_features, 32);
    CHECK_LT(col_blocks, int64_t{1} << 31) << "grouped gemm (cuda): db grid too large";
    bias_grad_kernel<T><<<dim3(static_cast<unsigned>(col_blocks), static_cast<unsigned>(n_experts)),
                          dim3(32, 32), 0, stream>>>(dbias, dy, expert_offsets, out_features);
    CUDA_CHECK(cudaGetLastError());
  }
}

template void grouped_gemm_forward_cuda<float>(float*, const float*, const float*, const float*,
                                               const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                               const RunContext&);
template void grouped_gemm_forward_cuda<__nv_bfloat16>(__nv_bfloat16*, const __nv_bfloat16*,
                                                       const __nv_bfloat16*, const __nv_bfloat16*,
                                                       const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                       const RunContext&);
template void grouped_gemm_backward_cuda<float>(float*, float*, float*, const float*, const float*,
                                                const float*, const int64_t*, int64_t, int64_t, int64_t,
                                                int64_t, const RunContext&);
template void grouped_gemm_backward_cuda<__nv_bfloat16>(__nv_bfloat16*, float*, float*, const __nv_bfloat16*,
                                                        const __nv_bfloat16*, const __nv_bfloat16*,
                                                        const int64_t*, int64_t, int64_t, int64_t, int64_t,
                                                        const RunContext&);

}  // namespace moeasr
