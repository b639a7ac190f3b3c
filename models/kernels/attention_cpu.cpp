// Fused multi-head attention with in-kernel attention dropout, CPU, float32 (flash-attention style).
//
// Per (batch b, head h, query row i), over the valid keys j of sample b:
//   s_j = (q_i . k_j) / sqrt(dh),  P_j = softmax_j(s),  z_j = keep(seed, b, h, i, j) / (1 - p),
//   out_i = sum_j P_j z_j v_j,     lse_i = log sum_j exp(s_j)   (saved for the backward).
// Backward recomputes s, P and z (the keep decisions come from a stateless counter-based hash, so no
// Lq x Lk tensor is ever stored):
//   g_j = z_j (dO_i . v_j),  D_i = sum_j P_j g_j,  ds_j = P_j (g_j - D_i),
//   dq_i = sum_j ds_j k_j / sqrt(dh),  dk_j += ds_j q_i / sqrt(dh),  dv_j += P_j z_j dO_i.
// Work is split over B * h with at::parallel_for; a (b, h) task owns its slices of out / dq / dk / dv (no races).
// Tasks run head-major (task = h * B + b): parallel_for hands each thread a contiguous range of tasks, and every
// range then holds all samples, whose key counts differ (padding), so the threads get similar work.
// Inside a task the valid keys are compacted into per-thread buffers laid out [dh][n] (transposed), so the loops
// over keys are unit-stride. Padded keys cost nothing and get zero gradients.
// Implementations of the same math: for the head widths MulT uses (4, 5, 8, 10, 16, 32, 64), an explicit SIMD path
// (several query rows per pass, fused passes, one-pass backward with D_i = dO_i . out_i, own exp) on 16 lanes with
// AVX-512 or 8 lanes with AVX2 + FMA (the row functions per instruction set, the task functions shared); otherwise
// portable loops that the compiler vectorises (expf through glibc's libmvec under -ffast-math). All draw the same
// keep decisions.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#include <immintrin.h>
#endif

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>





























namespace {

constexpr int kMaxHeadDim = 64;

inline uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// 32-bit key of attention row (b, h, i): independent of the tensor shapes.
inline uint32_t row_key(uint64_t seed, int64_t b, int64_t h, int64_t i) {
  uint64_t x = splitmix64(seed ^ splitmix64(static_cast<uint64_t>(b)));
  x = splitmix64(x ^ static_cast<uint64_t>(h));
  x = splitmix64(x ^ static_cast<uint64_t>(i));
  return static_cast<uint32_t>(x >> 32);
}

// Keep decision of key j in a row: a Weyl step through murmur3's 32-bit finaliser (splitmix32), 24 bits compared
// with the threshold round((1 - p) 2^24). 32-bit integer arithmetic only, so the loop over j vectorises.
inline float keep_factor(uint32_t key, int32_t j, int32_t threshold) {
  uint32_t x = key + static_cast<uint32_t>(j) * 0x9E3779B9u;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return static_cast<int32_t>(x >> 8) < threshold ? 1.0f : 0.0f;
}

inline int32_t keep_threshold(double p) {
  return static_cast<int32_t>(std::llround((1.0 - p) * static_cast<double>(1 << 24)));
}

// Strided view of a [B, h, L, dh] float tensor.
struct View4 {
  float* data;
  int64_t s0, s1, s2, s3;
  explicit View4(const at::Tensor& t)
      : data(t.data_ptr<float>()), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)), s3(t.stride(3)) {}
  inline float* at(int64_t b, int64_t h, int64_t i, int64_t d) const {
    return data + b * s0 + h * s1 + i * s2 + d * s3;
  }
};

struct Problem {
  int64_t B, H, Lq, Lk, dh;
  float scale;       // 1 / sqrt(dh)
  float drop_scale;  // 1 / (1 - p), 1 without dropout
  bool dropping;
  int32_t threshold;
  uint64_t seed;
  const bool* valid;  // [B, Lk], true = valid key
  const bool* qvalid;  // [B, Lq], true = a query row to compute; nullptr: every row
  inline bool row_on(int64_t b, int64_t i) const { return qvalid == nullptr || qvalid[b * Lq + i]; }
};

// Per-thread buffers, reused over the (b, h) tasks of one parallel chunk.
struct Buffers {
  std::vector<float> kt, vt, dkt, dvt, s, p, g;
  std::vector<int32_t> idx, jw, rows;  // rows: the task's query rows to compute (AVX-512 path)  // jw: the Weyl steps idx * 0x9E3779B9 of the AVX-512 path's keep decisions
  // Sized for both paths: keys padded to a multiple of 16, up to 4 query rows per pass (the AVX-512 path).
  explicit Buffers(const Problem& pr, bool backward) {
    const int64_t lp = (pr.Lk + 15) / 16 * 16 + 16;  // + the AVX-512 path's row padding
    kt.resize(pr.dh * lp);
    vt.resize(pr.dh * lp);
    s.resize(4 * lp);
    idx.resize(lp);
    jw.resize(lp);
    rows.resize(pr.Lq);
    if (backward) {
      p.resize(4 * lp);
      g.resize(4 * lp);
      dkt.resize(pr.dh * lp);
      dvt.resize(pr.dh * lp);
    }
  }
};

// Compacts sample b's valid keys of head h into kt (pre-scaled by 1/sqrt(dh)) and vt, both [dh][ld]. Portable
// path (lanes = 1): ld = np = n. AVX-512 path (lanes = 16): np = n rounded up to 16, ld = np + 16 (one cache line
// more, so that rows np * 4 bytes apart, 2 KiB for 512 keys, do not all fall into the same few L1 sets), zero
// padding, idx padded with 0 and jw = idx * 0x9E3779B9 (the Weyl steps of the keep decisions).
inline int64_t gather_keys(const Problem& pr, const View4& k, const View4& v, int64_t b, int64_t h, Buffers& buf,
                           int lanes, int64_t* np_out, int64_t* ld_out) {
  const bool* valid = pr.valid + b * pr.Lk;
  int64_t n = 0;
  for (int64_t j = 0; j < pr.Lk; ++j)
    if (valid[j]) buf.idx[n++] = static_cast<int32_t>(j);
  const int64_t np = lanes > 1 ? (n + lanes - 1) / lanes * lanes : n;
  const int64_t ld = lanes > 1 ? np + lanes : n;
  if (lanes > 1) {
    for (int64_t t = n; t < np; ++t) buf.idx[t] = 0;
    for (int64_t t = 0; t < np; ++t) buf.jw[t] = static_cast<int32_t>(static_cast<uint32_t>(buf.idx[t]) * 0x9E3779B9u);
    std::fill(buf.kt.begin(), buf.kt.begin() + pr.dh * ld, 0.0f);
    std::fill(buf.vt.begin(), buf.vt.begin() + pr.dh * ld, 0.0f);
  }
  for (int64_t t = 0; t < n; ++t) {
    const int64_t j = buf.idx[t];
    for (int64_t d = 0; d < pr.dh; ++d) {
      buf.kt[d * ld + t] = *k.at(b, h, j, d) * pr.scale;
      buf.vt[d * ld + t] = *v.at(b, h, j, d);
    }
  }
  *np_out = np;
  *ld_out = ld;
  return n;
}

// s[t] = sum_d q[d] kt[d][t]; returns max_t s[t].
template <int DH>
inline float scores(const float* __restrict q, const float* __restrict kt, float* __restrict s, int64_t n, int dh_rt) {
  const int dh = DH > 0 ? DH : dh_rt;
  float m = -FLT_MAX;
#pragma omp simd reduction(max : m)
  for (int64_t t = 0; t < n; ++t) {
    float acc = 0.0f;
    for (int d = 0; d < dh; ++d) acc += q[d] * kt[d * n + t];
    s[t] = acc;
    m = std::max(m, acc);
  }
  return m;
}

template <int DH>
void forward_task(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& out, float* lse,
                  int64_t b, int64_t h, Buffers& buf) {
  const int dh = DH > 0 ? DH : static_cast<int>(pr.dh);
  int64_t np = 0, ld = 0;  // both n here
  const int64_t n = gather_keys(pr, k, v, b, h, buf, 1, &np, &ld);
  (void)np;
  (void)ld;
  float* __restrict s = buf.s.data();
  const int32_t* __restrict idx = buf.idx.data();
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  float qi[kMaxHeadDim];
  for (int64_t i = 0; i < pr.Lq; ++i) {
    float* lse_i = lse + (b * pr.H + h) * pr.Lq + i;
    if (n == 0 || !pr.row_on(b, i)) {  // no valid key (callers guarantee one) or a row not asked for: zero output
      for (int d = 0; d < dh; ++d) *out.at(b, h, i, d) = 0.0f;
      *lse_i = 0.0f;
      continue;
    }
    for (int d = 0; d < dh; ++d) qi[d] = *q.at(b, h, i, d);
    const float m = scores<DH>(qi, kt, s, n, dh);
    float l = 0.0f;
#pragma omp simd reduction(+ : l)
    for (int64_t t = 0; t < n; ++t) {
      const float e = expf(s[t] - m);
      s[t] = e;
      l += e;
    }
    if (pr.dropping) {
      const uint32_t key = row_key(pr.seed, b, h, i);
      const int32_t thr = pr.threshold;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) s[t] *= keep_factor(key, idx[t], thr);
    }
    const float norm = pr.drop_scale / l;
    for (int d = 0; d < dh; ++d) {
      const float* __restrict vd = vt + d * n;
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t t = 0; t < n; ++t) acc += s[t] * vd[t];
      *out.at(b, h, i, d) = acc * norm;
    }
    *lse_i = m + logf(l);
  }
}

template <int DH>
void backward_task(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& dout,
                   const float* lse, const View4& dq, const View4& dk, const View4& dv, int64_t b, int64_t h,
                   Buffers& buf) {
  const int dh = DH > 0 ? DH : static_cast<int>(pr.dh);
  int64_t np = 0, ld = 0;  // both n here
  const int64_t n = gather_keys(pr, k, v, b, h, buf, 1, &np, &ld);
  (void)np;
  (void)ld;
  float* __restrict s = buf.s.data();
  float* __restrict pz = buf.p.data();
  float* __restrict g = buf.g.data();
  float* __restrict dkt = buf.dkt.data();
  float* __restrict dvt = buf.dvt.data();
  const int32_t* __restrict idx = buf.idx.data();
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  std::fill(dkt, dkt + dh * n, 0.0f);
  std::fill(dvt, dvt + dh * n, 0.0f);
  float qi[kMaxHeadDim], doi[kMaxHeadDim];
  for (int64_t i = 0; i < pr.Lq; ++i) {
    if (n == 0 || !pr.row_on(b, i)) {
      for (int d = 0; d < dh; ++d) *dq.at(b, h, i, d) = 0.0f;
      continue;
    }
    for (int d = 0; d < dh; ++d) {
      qi[d] = *q.at(b, h, i, d);
      doi[d] = *dout.at(b, h, i, d);
    }
    const float lse_i = lse[(b * pr.H + h) * pr.Lq + i];
    scores<DH>(qi, kt, s, n, dh);
    const float zs = pr.drop_scale;
    // s <- P, pz <- P z, g <- z (dO . v)
    if (pr.dropping) {
      const uint32_t key = row_key(pr.seed, b, h, i);
      const int32_t thr = pr.threshold;
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        const float z = keep_factor(key, idx[t], thr) * zs;
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += doi[d] * vt[d * n + t];
        const float pt = expf(s[t] - lse_i);
        s[t] = pt;
        pz[t] = pt * z;
        g[t] = acc * z;
      }
    } else {
#pragma omp simd
      for (int64_t t = 0; t < n; ++t) {
        float acc = 0.0f;
        for (int d = 0; d < dh; ++d) acc += doi[d] * vt[d * n + t];
        const float pt = expf(s[t] - lse_i);
        s[t] = pt;
        pz[t] = pt * zs;
        g[t] = acc * zs;
      }
    }
    float D = 0.0f;
#pragma omp simd reduction(+ : D)
    for (int64_t t = 0; t < n; ++t) D += s[t] * g[t];
#pragma omp simd
    for (int64_t t = 0; t < n; ++t) g[t] = s[t] * (g[t] - D);  // g <- ds
    for (int d = 0; d < dh; ++d) {
      const float* __restrict kd = kt + d * n;
      float* __restrict dkd = dkt + d * n;
      float* __restrict dvd = dvt + d * n;
      const float qd = qi[d], dod = doi[d];
      float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
      for (int64_t t = 0; t < n; ++t) {
        acc += g[t] * kd[t];
        dkd[t] += g[t] * qd;
        dvd[t] += pz[t] * dod;
      }
      *dq.at(b, h, i, d) = acc;  // kt carries the 1/sqrt(dh)
    }
  }
  for (int64_t t = 0; t < n; ++t) {
    const int64_t j = idx[t];
    for (int d = 0; d < dh; ++d) {
      *dk.at(b, h, j, d) = dkt[d * n + t] * pr.scale;
      *dv.at(b, h, j, d) = dvt[d * n + t];
    }
  }
}

#if defined(__AVX512F__)
// ---------------------------------------------------------------------------------------------------------------
// AVX-512 path: 16 keys per vector, R query rows per pass (the key/value vectors loaded once serve R rows, and the
// dk / dv read-modify-writes happen once per R rows), the passes over a row fused so that the weights never leave
// registers except for one store of P (and g in backward). Keys are compacted into [dh][np] buffers, np = n rounded
// up to 16 and zero padded; the lanes past n are masked out of the max, the sums and the gradients.

#define AFFECT_SIMD_PATH 1

constexpr int kLanes = 16;

// exp(x) for x <= 0 (Cephes expf: range reduction by n ln 2 in two parts, degree-5 polynomial, scale by 2^n).
inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 r2 = _mm512_mul_ps(r, r);
  const __m512 e = _mm512_add_ps(_mm512_fmadd_ps(p, r2, r), _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(e, n);
}

// keep_factor for 16 keys at once, given their Weyl steps jw = j * 0x9E3779B9 (precomputed per task): the lanes
// whose key is kept.
inline __mmask16 keep16(uint32_t key, __m512i jw, int32_t threshold) {
  __m512i x = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(key)), jw);
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 13));
  x = _mm512_mullo_epi32(x, _mm512_set1_epi32(static_cast<int32_t>(0xC2B2AE35u)));
  x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
  return _mm512_cmplt_epi32_mask(_mm512_srli_epi32(x, 8), _mm512_set1_epi32(threshold));
}

inline __mmask16 lane_mask(int64_t t, int64_t n) {
  const int64_t rem = n - t;
  return rem >= kLanes ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << rem) - 1u);
}

// Query rows rows[0 .. R - 1] of task (b, h).
template <int DH, int R>
inline void forward_rows_simd(const Problem& pr, const View4& q, const View4& out, float* lse, int64_t b, int64_t h,
                           const int32_t* rows, int64_t n, int64_t np, int64_t ld, Buffers& buf) {
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict s = buf.s.data();  // [R][np]
  float qi[R][DH];
  #pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
    #pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) qi[r][d] = *q.at(b, h, rows[r], d);
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY);
  __m512 mv[R];
  #pragma GCC unroll 64
  for (int r = 0; r < R; ++r) mv[r] = neg_inf;
  for (int64_t t = 0; t < np; t += kLanes) {
    __m512 acc[R];
    #pragma GCC unroll 64
    for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_ps();
    #pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      const __m512 kv = _mm512_loadu_ps(kt + d * ld + t);
      #pragma GCC unroll 64
      for (int r = 0; r < R; ++r) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(qi[r][d]), kv, acc[r]);
    }
    const __mmask16 lm = lane_mask(t, n);
    #pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm512_mask_blend_ps(lm, neg_inf, acc[r]);
      _mm512_storeu_ps(s + r * ld + t, acc[r]);
      mv[r] = _mm512_max_ps(mv[r], acc[r]);
    }
  }
  __m512 m[R], l[R], o[R][DH];
  float mrow[R];
  uint32_t key[R];
  #pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    mrow[r] = _mm512_reduce_max_ps(mv[r]);
    m[r] = _mm512_set1_ps(mrow[r]);
    l[r] = _mm512_setzero_ps();
    #pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) o[r][d] = _mm512_setzero_ps();
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  for (int64_t t = 0; t < np; t += kLanes) {
    const __mmask16 lm = lane_mask(t, n);
    const __m512i jv = _mm512_loadu_si512(jw + t);
    #pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      __m512 e = _mm512_maskz_mov_ps(lm, exp512(_mm512_sub_ps(_mm512_loadu_ps(s + r * ld + t), m[r])));
      l[r] = _mm512_add_ps(l[r], e);
      if (pr.dropping) e = _mm512_maskz_mov_ps(keep16(key[r], jv, pr.threshold), e);
      #pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) o[r][d] = _mm512_fmadd_ps(e, _mm512_loadu_ps(vt + d * ld + t), o[r][d]);
    }
  }
  #pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    const float lsum = _mm512_reduce_add_ps(l[r]);
    const float norm = pr.drop_scale / lsum;
    #pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *out.at(b, h, rows[r], d) = _mm512_reduce_add_ps(o[r][d]) * norm;
    lse[(b * pr.H + h) * pr.Lq + rows[r]] = mrow[r] + logf(lsum);
  }
}

// Query rows per pass: the forward keeps R * DH output accumulators in registers (<= 20 of the 32), the backward
// R * DH dq accumulators beside the 2 * DH dk / dv ones (R * DH <= 10).
constexpr int fwd_rows_per_pass(int dh) { return dh <= 5 ? 4 : (dh <= 10 ? 2 : 1); }
constexpr int bwd_rows_per_pass(int dh) { return dh <= 5 ? 2 : 1; }

// One pass over the keys per R rows: D_i = sum_j P_j g_j equals dO_i . out_i (out_i = sum_j P_j z_j v_j), so it is
// known before the pass (as in FlashAttention-2) and ds, dq, dk and dv come out of the same loop.
template <int DH, int R>
inline void backward_rows_simd(const Problem& pr, const View4& q, const View4& dout, const View4& out, const float* lse,
                            const View4& dq, int64_t b, int64_t h, const int32_t* rows, int64_t n, int64_t np, int64_t ld, Buffers& buf) {
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict dkt = buf.dkt.data();
  float* __restrict dvt = buf.dvt.data();
  float qi[R][DH], doi[R][DH];
  __m512 lsev[R], D[R], dqa[R][DH];
  uint32_t key[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    float dsum = 0.0f;
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      qi[r][d] = *q.at(b, h, rows[r], d);
      doi[r][d] = *dout.at(b, h, rows[r], d);
      dsum += doi[r][d] * *out.at(b, h, rows[r], d);
      dqa[r][d] = _mm512_setzero_ps();
    }
    lsev[r] = _mm512_set1_ps(lse[(b * pr.H + h) * pr.Lq + rows[r]]);
    D[r] = _mm512_set1_ps(dsum);
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  const __m512 zs = _mm512_set1_ps(pr.drop_scale);
  for (int64_t t = 0; t < np; t += kLanes) {
    const __mmask16 lm = lane_mask(t, n);
    const __m512i jv = _mm512_loadu_si512(jw + t);
    __m512 dka[DH], dva[DH];
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) dka[d] = dva[d] = _mm512_setzero_ps();
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      __m512 sc = _mm512_setzero_ps(), gd = _mm512_setzero_ps();
#pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) {
        sc = _mm512_fmadd_ps(_mm512_set1_ps(qi[r][d]), _mm512_loadu_ps(kt + d * ld + t), sc);
        gd = _mm512_fmadd_ps(_mm512_set1_ps(doi[r][d]), _mm512_loadu_ps(vt + d * ld + t), gd);
      }
      const __m512 p = _mm512_maskz_mov_ps(lm, exp512(_mm512_sub_ps(sc, lsev[r])));
      const __m512 pz = pr.dropping ? _mm512_maskz_mul_ps(keep16(key[r], jv, pr.threshold), p, zs)
                                    : _mm512_mul_ps(p, zs);
      const __m512 ds = _mm512_fmsub_ps(pz, gd, _mm512_mul_ps(p, D[r]));  // P (z dO.v - D)
#pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) {
        dqa[r][d] = _mm512_fmadd_ps(ds, _mm512_loadu_ps(kt + d * ld + t), dqa[r][d]);
        dka[d] = _mm512_fmadd_ps(ds, _mm512_set1_ps(qi[r][d]), dka[d]);
        dva[d] = _mm512_fmadd_ps(pz, _mm512_set1_ps(doi[r][d]), dva[d]);
      }
    }
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      _mm512_storeu_ps(dkt + d * ld + t, _mm512_add_ps(_mm512_loadu_ps(dkt + d * ld + t), dka[d]));
      _mm512_storeu_ps(dvt + d * ld + t, _mm512_add_ps(_mm512_loadu_ps(dvt + d * ld + t), dva[d]));
    }
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *dq.at(b, h, rows[r], d) = _mm512_reduce_add_ps(dqa[r][d]);  // kt has 1/sqrt(dh)
}

#elif defined(__AVX2__) && defined(__FMA__)
// ---------------------------------------------------------------------------------------------------------------
// AVX2 path (x86 without AVX-512, e.g. AMD Zen 2 and 3): the AVX-512 path's algorithm on 8 keys per vector. With
// 16 vector registers, fewer query rows per pass; masks are all-ones / all-zeros lanes instead of mask registers.
#define AFFECT_SIMD_PATH 1

constexpr int kLanes = 8;

// exp(x) for x <= 0, the same Cephes expf as exp512 (2^n built in the exponent bits: AVX2 has no scalef).
inline __m256 exp256(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  const __m256 e = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
  const __m256i pow2 = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(e, _mm256_castsi256_ps(pow2));
}

// keep_factor for 8 keys at once (their Weyl steps jw): all-ones lanes where the key is kept.
inline __m256 keep8(uint32_t key, __m256i jw, int32_t threshold) {
  __m256i x = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(key)), jw);
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(static_cast<int32_t>(0x85EBCA6Bu)));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 13));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(static_cast<int32_t>(0xC2B2AE35u)));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(threshold), _mm256_srli_epi32(x, 8)));
}

// All-ones lanes for the keys t .. t + 7 that exist (t < n).
inline __m256 lane_mask8(int64_t t, int64_t n) {
  const int64_t rem = n - t;
  if (rem >= kLanes) return _mm256_castsi256_ps(_mm256_set1_epi32(-1));
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(rem)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

inline float hsum8(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

inline float hmax8(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}

template <int DH, int R>
inline void forward_rows_simd(const Problem& pr, const View4& q, const View4& out, float* lse, int64_t b, int64_t h,
                              const int32_t* rows, int64_t n, int64_t np, int64_t ld, Buffers& buf) {
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict s = buf.s.data();  // [R][ld]
  float qi[R][DH];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) qi[r][d] = *q.at(b, h, rows[r], d);
  const __m256 neg_inf = _mm256_set1_ps(-INFINITY);
  __m256 mv[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) mv[r] = neg_inf;
  for (int64_t t = 0; t < np; t += kLanes) {
    __m256 acc[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) acc[r] = _mm256_setzero_ps();
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      const __m256 kv = _mm256_loadu_ps(kt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(qi[r][d]), kv, acc[r]);
    }
    const __m256 lm = lane_mask8(t, n);
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      acc[r] = _mm256_blendv_ps(neg_inf, acc[r], lm);
      _mm256_storeu_ps(s + r * ld + t, acc[r]);
      mv[r] = _mm256_max_ps(mv[r], acc[r]);
    }
  }
  __m256 m[R], l[R], o[R][DH];
  float mrow[R];
  uint32_t key[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    mrow[r] = hmax8(mv[r]);
    m[r] = _mm256_set1_ps(mrow[r]);
    l[r] = _mm256_setzero_ps();
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) o[r][d] = _mm256_setzero_ps();
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  for (int64_t t = 0; t < np; t += kLanes) {
    const __m256 lm = lane_mask8(t, n);
    const __m256i jv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(jw + t));
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      __m256 e = _mm256_and_ps(lm, exp256(_mm256_sub_ps(_mm256_loadu_ps(s + r * ld + t), m[r])));
      l[r] = _mm256_add_ps(l[r], e);
      if (pr.dropping) e = _mm256_and_ps(keep8(key[r], jv, pr.threshold), e);
#pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) o[r][d] = _mm256_fmadd_ps(e, _mm256_loadu_ps(vt + d * ld + t), o[r][d]);
    }
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    const float lsum = hsum8(l[r]);
    const float norm = pr.drop_scale / lsum;
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *out.at(b, h, rows[r], d) = hsum8(o[r][d]) * norm;
    lse[(b * pr.H + h) * pr.Lq + rows[r]] = mrow[r] + logf(lsum);
  }
}

// Query rows per pass with 16 registers (measured on AMD Zen 2): the forward keeps R * DH <= 10 output accumulators;
// the backward takes two rows up to DH 10 (R * DH dq accumulators spill a little, but dk / dv are read and written
// once per two rows: 1.4x faster than one row at DH 10).
constexpr int fwd_rows_per_pass(int dh) { return dh <= 5 ? 2 : 1; }
constexpr int bwd_rows_per_pass(int dh) { return dh <= 10 ? 2 : 1; }

// The AVX-512 path's one-pass backward (D_i = dO_i . out_i) on 8 keys per vector.
template <int DH, int R>
inline void backward_rows_simd(const Problem& pr, const View4& q, const View4& dout, const View4& out,
                               const float* lse, const View4& dq, int64_t b, int64_t h, const int32_t* rows,
                               int64_t n, int64_t np, int64_t ld, Buffers& buf) {
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict dkt = buf.dkt.data();
  float* __restrict dvt = buf.dvt.data();
  float qi[R][DH], doi[R][DH], lsef[R], Df[R];
  __m256 dqa[R][DH];
  uint32_t key[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    float dsum = 0.0f;
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      qi[r][d] = *q.at(b, h, rows[r], d);
      doi[r][d] = *dout.at(b, h, rows[r], d);
      dsum += doi[r][d] * *out.at(b, h, rows[r], d);
      dqa[r][d] = _mm256_setzero_ps();
    }
    lsef[r] = lse[(b * pr.H + h) * pr.Lq + rows[r]];
    Df[r] = dsum;
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  const __m256 zs = _mm256_set1_ps(pr.drop_scale);
  for (int64_t t = 0; t < np; t += kLanes) {
    const __m256 lm = lane_mask8(t, n);
    const __m256i jv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(jw + t));
    __m256 sc[R], gd[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) sc[r] = gd[r] = _mm256_setzero_ps();
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      const __m256 kv = _mm256_loadu_ps(kt + d * ld + t);
      const __m256 vv = _mm256_loadu_ps(vt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        sc[r] = _mm256_fmadd_ps(_mm256_set1_ps(qi[r][d]), kv, sc[r]);
        gd[r] = _mm256_fmadd_ps(_mm256_set1_ps(doi[r][d]), vv, gd[r]);
      }
    }
    __m256 ds[R], pz[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      const __m256 p = _mm256_and_ps(lm, exp256(_mm256_sub_ps(sc[r], _mm256_set1_ps(lsef[r]))));
      pz[r] = _mm256_mul_ps(p, zs);
      if (pr.dropping) pz[r] = _mm256_and_ps(keep8(key[r], jv, pr.threshold), pz[r]);
      ds[r] = _mm256_fmsub_ps(pz[r], gd[r], _mm256_mul_ps(p, _mm256_set1_ps(Df[r])));  // P (z dO.v - D)
    }
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      const __m256 kv = _mm256_loadu_ps(kt + d * ld + t);
      __m256 dk = _mm256_loadu_ps(dkt + d * ld + t);
      __m256 dv = _mm256_loadu_ps(dvt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        dqa[r][d] = _mm256_fmadd_ps(ds[r], kv, dqa[r][d]);
        dk = _mm256_fmadd_ps(ds[r], _mm256_set1_ps(qi[r][d]), dk);
        dv = _mm256_fmadd_ps(pz[r], _mm256_set1_ps(doi[r][d]), dv);
      }
      _mm256_storeu_ps(dkt + d * ld + t, dk);
      _mm256_storeu_ps(dvt + d * ld + t, dv);
    }
  }
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *dq.at(b, h, rows[r], d) = hsum8(dqa[r][d]);  // kt has 1/sqrt(dh)
}
#endif  // __AVX512F__ / __AVX2__

#if defined(AFFECT_SIMD_PATH)
// The query rows of sample b to compute, into buf.rows; returns their count.
inline int64_t query_rows(const Problem& pr, int64_t b, Buffers& buf) {
  int64_t nr = 0;
  for (int64_t i = 0; i < pr.Lq; ++i)
    if (pr.row_on(b, i)) buf.rows[nr++] = static_cast<int32_t>(i);
  return nr;
}

template <int DH>
void forward_task_simd(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& out, float* lse,
                    int64_t b, int64_t h, Buffers& buf) {
  int64_t np = 0, ld = 0;
  const int64_t n = gather_keys(pr, k, v, b, h, buf, kLanes, &np, &ld);
  if (n == 0) {  // no valid key: zero output (callers guarantee at least one)
    for (int64_t i = 0; i < pr.Lq; ++i) {
      #pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) *out.at(b, h, i, d) = 0.0f;
      lse[(b * pr.H + h) * pr.Lq + i] = 0.0f;
    }
    return;
  }
  const int64_t nr = query_rows(pr, b, buf);
  for (int64_t i = 0; i < pr.Lq; ++i) {  // rows not asked for: zero output
    if (pr.row_on(b, i)) continue;
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *out.at(b, h, i, d) = 0.0f;
    lse[(b * pr.H + h) * pr.Lq + i] = 0.0f;
  }
  constexpr int R = fwd_rows_per_pass(DH);
  const int32_t* rows = buf.rows.data();
  int64_t g = 0;
  for (; g + R <= nr; g += R) forward_rows_simd<DH, R>(pr, q, out, lse, b, h, rows + g, n, np, ld, buf);
  for (; g < nr; ++g) forward_rows_simd<DH, 1>(pr, q, out, lse, b, h, rows + g, n, np, ld, buf);
}

template <int DH>
void backward_task_simd(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& dout,
                     const View4& out, const float* lse, const View4& dq, const View4& dk, const View4& dv, int64_t b, int64_t h,
                     Buffers& buf) {
  int64_t np = 0, ld = 0;
  const int64_t n = gather_keys(pr, k, v, b, h, buf, kLanes, &np, &ld);
  if (n == 0) {
    for (int64_t i = 0; i < pr.Lq; ++i)
      #pragma GCC unroll 64
      for (int d = 0; d < DH; ++d) *dq.at(b, h, i, d) = 0.0f;
    return;
  }
  std::fill(buf.dkt.begin(), buf.dkt.begin() + DH * ld, 0.0f);
  std::fill(buf.dvt.begin(), buf.dvt.begin() + DH * ld, 0.0f);
  const int64_t nr = query_rows(pr, b, buf);
  for (int64_t i = 0; i < pr.Lq; ++i) {  // rows not asked for: zero gradient
    if (pr.row_on(b, i)) continue;
#pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) *dq.at(b, h, i, d) = 0.0f;
  }
  constexpr int R = bwd_rows_per_pass(DH);
  const int32_t* rows = buf.rows.data();
  int64_t g = 0;
  for (; g + R <= nr; g += R) backward_rows_simd<DH, R>(pr, q, dout, out, lse, dq, b, h, rows + g, n, np, ld, buf);
  for (; g < nr; ++g) backward_rows_simd<DH, 1>(pr, q, dout, out, lse, dq, b, h, rows + g, n, np, ld, buf);
  const float* dkt = buf.dkt.data();
  const float* dvt = buf.dvt.data();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t j = buf.idx[t];
    #pragma GCC unroll 64
    for (int d = 0; d < DH; ++d) {
      *dk.at(b, h, j, d) = dkt[d * ld + t] * pr.scale;
      *dv.at(b, h, j, d) = dvt[d * ld + t];
    }
  }
}
#endif  // AFFECT_SIMD_PATH


void check_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& valid) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, "fused attention: q, k, v must be [B, h, L, dh]");
  TORCH_CHECK(q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat && v.scalar_type() == at::kFloat,
              "fused attention: float32 only");
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && v.device().is_cpu() && valid.device().is_cpu(),
              "fused attention: CPU tensors only");
  TORCH_CHECK(k.sizes() == v.sizes(), "fused attention: k and v shapes differ");
  TORCH_CHECK(q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              "fused attention: q and k disagree on B, h or dh");
  TORCH_CHECK(q.size(3) >= 1 && q.size(3) <= kMaxHeadDim, "fused attention: head width must be in [1, 64]");
  TORCH_CHECK(k.size(2) < (int64_t(1) << 31), "fused attention: too many keys");
  TORCH_CHECK(valid.scalar_type() == at::kBool && valid.dim() == 2 && valid.size(0) == q.size(0) &&
                  valid.size(1) == k.size(2) && valid.is_contiguous(),
              "fused attention: key mask must be a contiguous bool [B, Lk] tensor");
}

void check_query_mask(const at::Tensor& q, const std::optional<at::Tensor>& qvalid) {
  if (!qvalid.has_value()) return;
  const at::Tensor& m = *qvalid;
  TORCH_CHECK(m.device().is_cpu() && m.scalar_type() == at::kBool && m.dim() == 2 && m.size(0) == q.size(0) &&
                  m.size(1) == q.size(2) && m.is_contiguous(),
              "fused attention: query mask must be a contiguous bool [B, Lq] tensor");
}

Problem make_problem(const at::Tensor& q, const at::Tensor& k, const at::Tensor& valid,
                     const std::optional<at::Tensor>& qvalid, double p, int64_t seed) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "fused attention: dropout must be in [0, 1)");
  Problem pr;
  pr.B = q.size(0);
  pr.H = q.size(1);
  pr.Lq = q.size(2);
  pr.Lk = k.size(2);
  pr.dh = q.size(3);
  pr.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(pr.dh)));
  pr.threshold = keep_threshold(p);
  pr.dropping = p > 0.0 && pr.threshold < (1 << 24);
  pr.drop_scale = p > 0.0 ? static_cast<float>(1.0 / (1.0 - p)) : 1.0f;
  pr.seed = static_cast<uint64_t>(seed);
  pr.valid = valid.data_ptr<bool>();
  pr.qvalid = qvalid.has_value() ? qvalid->data_ptr<bool>() : nullptr;
  return pr;
}

// [B, L, h, dh] storage viewed as [B, h, L, dh]: the caller's transpose(1, 2).reshape(B, L, h * dh) is then free.
at::Tensor empty_bhld(const at::Tensor& like, int64_t L, bool zero) {
  auto opts = like.options();
  auto t = zero ? at::zeros({like.size(0), L, like.size(1), like.size(3)}, opts)
                : at::empty({like.size(0), L, like.size(1), like.size(3)}, opts);
  return t.transpose(1, 2);
}

template <typename F>
void dispatch_dh(int64_t dh, F&& f) {
  switch (dh) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 10: f(std::integral_constant<int, 10>{}); break;  // MulT's memory transformers (width 2 d = 100)
    case 16: f(std::integral_constant<int, 16>{}); break;
    case 32: f(std::integral_constant<int, 32>{}); break;
    case 64: f(std::integral_constant<int, 64>{}); break;
    default: f(std::integral_constant<int, 0>{}); break;
  }
}

std::vector<at::Tensor> attention_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& valid, const std::optional<at::Tensor>& qvalid,
                                          double p, int64_t seed) {
  check_inputs(q, k, v, valid);
  check_query_mask(q, qvalid);
  const Problem pr = make_problem(q, k, valid, qvalid, p, seed);
  at::Tensor out = empty_bhld(q, pr.Lq, false);
  at::Tensor lse = at::empty({pr.B, pr.H, pr.Lq}, q.options());
  const View4 vq(q), vk(k), vv(v), vo(out);
  float* lse_ptr = lse.data_ptr<float>();
  dispatch_dh(pr.dh, [&](auto DH) {
    at::parallel_for(0, pr.B * pr.H, 1, [&](int64_t begin, int64_t end) {
      Buffers buf(pr, false);
      for (int64_t task = begin; task < end; ++task) {
        constexpr int dh = decltype(DH)::value;
#if defined(AFFECT_SIMD_PATH)
        if constexpr (dh > 0) {
          forward_task_simd<dh>(pr, vq, vk, vv, vo, lse_ptr, task % pr.B, task / pr.B, buf);
          continue;
        }
#endif
        forward_task<dh>(pr, vq, vk, vv, vo, lse_ptr, task % pr.B, task / pr.B, buf);
      }
    });
  });
  return {out, lse};
}

std::vector<at::Tensor> attention_backward(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& valid,
                                           const std::optional<at::Tensor>& qvalid, const at::Tensor& out,
                                           const at::Tensor& lse, double p, int64_t seed,
                                           const std::optional<at::Tensor>& dq_into,
                                           const std::optional<at::Tensor>& dk_into,
                                           const std::optional<at::Tensor>& dv_into) {
  check_inputs(q, k, v, valid);
  check_query_mask(q, qvalid);
  TORCH_CHECK(dout.sizes() == q.sizes() && dout.scalar_type() == at::kFloat, "fused attention: bad grad_out");
  TORCH_CHECK(out.sizes() == q.sizes() && out.scalar_type() == at::kFloat, "fused attention: bad out");
  TORCH_CHECK(lse.is_contiguous() && lse.numel() == q.size(0) * q.size(1) * q.size(2), "fused attention: bad lse");
  const Problem pr = make_problem(q, k, valid, qvalid, p, seed);
  // The gradients go into the caller's tensors when given (any strides: views of one packed gradient, so autograd
  // does not stack and permute them; dk and dv zero-filled by the caller, padded keys keep zero), else new ones.
  const bool into = dq_into.has_value() || dk_into.has_value() || dv_into.has_value();
  TORCH_CHECK(!into || (dq_into.has_value() && dk_into.has_value() && dv_into.has_value()),
              "fused attention: give all of dq, dk and dv or none");
  if (into) {
    TORCH_CHECK(dq_into->sizes() == q.sizes() && dk_into->sizes() == k.sizes() && dv_into->sizes() == v.sizes() &&
                    dq_into->scalar_type() == at::kFloat && dk_into->scalar_type() == at::kFloat &&
                    dv_into->scalar_type() == at::kFloat && dq_into->device().is_cpu() &&
                    dk_into->device().is_cpu() && dv_into->device().is_cpu(),
                "fused attention: dq, dk, dv must be CPU float32 tensors shaped like q, k, v");
  }
  at::Tensor dq = into ? *dq_into : empty_bhld(q, pr.Lq, false);
  at::Tensor dk = into ? *dk_into : empty_bhld(k, pr.Lk, true);  // padded keys keep zero gradients
  at::Tensor dv = into ? *dv_into : empty_bhld(v, pr.Lk, true);
  const View4 vq(q), vk(k), vv(v), vdo(dout), vout(out), vdq(dq), vdk(dk), vdv(dv);
  const float* lse_ptr = lse.data_ptr<float>();
  dispatch_dh(pr.dh, [&](auto DH) {
    at::parallel_for(0, pr.B * pr.H, 1, [&](int64_t begin, int64_t end) {
      Buffers buf(pr, true);
      for (int64_t task = begin; task < end; ++task) {
        constexpr int dh = decltype(DH)::value;
#if defined(AFFECT_SIMD_PATH)
        if constexpr (dh > 0) {
          backward_task_simd<dh>(pr, vq, vk, vv, vdo, vout, lse_ptr, vdq, vdk, vdv, task % pr.B, task / pr.B, buf);
          continue;
        }
#endif
        backward_task<dh>(pr, vq, vk, vv, vdo, lse_ptr, vdq, vdk, vdv, task % pr.B, task / pr.B, buf);
      }
    });
  });
  return {dq, dk, dv};
}

// The kernel's keep decisions for every (b, h, i, j) (debug and tests): bool [B, h, Lq, Lk].
at::Tensor dropout_keep_mask(int64_t seed, int64_t B, int64_t H, int64_t Lq, int64_t Lk, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "fused attention: dropout must be in [0, 1)");
  at::Tensor keep = at::empty({B, H, Lq, Lk}, at::TensorOptions().dtype(at::kBool));
  bool* out = keep.data_ptr<bool>();
  const int32_t thr = keep_threshold(p);
  const uint64_t s = static_cast<uint64_t>(seed);
  at::parallel_for(0, B * H * Lq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (H * Lq), h = (r / Lq) % H, i = r % Lq;
      const uint32_t key = row_key(s, b, h, i);
      for (int64_t j = 0; j < Lk; ++j) out[r * Lk + j] = keep_factor(key, static_cast<int32_t>(j), thr) > 0.0f;
    }
  });
  return keep;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &attention_forward, "fused attention forward: (out [B,h,Lq,dh], lse [B,h,Lq])");
  m.def("backward", &attention_backward, "fused attention backward: (dq, dk, dv), into given tensors if any",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("valid"), py::arg("qvalid"),
        py::arg("out"), py::arg("lse"), py::arg("p"), py::arg("seed"), py::arg("dq") = py::none(),
        py::arg("dk") = py::none(), py::arg("dv") = py::none());
  m.def("dropout_keep_mask", &dropout_keep_mask, "the kernel's keep mask, bool [B,h,Lq,Lk]");
}
