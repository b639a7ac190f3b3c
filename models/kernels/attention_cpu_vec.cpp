// Fused multi-head attention with in-kernel attention dropout, CPU, float32 (flash-attention style): one SIMD source
// for every instruction set, written over ATen's at::vec::Vectorized<float>, built without -ffast-math.
//
// Per (batch b, head h, query row i), over the valid keys j of sample b:
//   s_j = (q_i . k_j) / sqrt(dh),  P_j = softmax_j(s),  z_j = keep(seed, b, h, i, j) / (1 - p),
//   out_i = sum_j P_j z_j v_j,     lse_i = log sum_j exp(s_j)   (saved for the backward).
// Backward recomputes s, P and z (the keep decisions come from a stateless counter-based hash, so no
// Lq x Lk tensor is ever stored), in one pass over the keys per query rows (FlashAttention-2: D_i = dO_i . out_i
// equals sum_j P_j g_j, so it is known before the pass):
//   g_j = z_j (dO_i . v_j),  ds_j = P_j (g_j - D_i),
//   dq_i = sum_j ds_j k_j / sqrt(dh),  dk_j += ds_j q_i / sqrt(dh),  dv_j += P_j z_j dO_i.
// Work is split over B * h with at::parallel_for; a (b, h) task owns its slices of out / dq / dk / dv (no races).
// Tasks run head-major (task = h * B + b): parallel_for hands each thread a contiguous range of tasks, and every
// range then holds all samples, whose key counts differ (padding), so the threads get similar work.
// Inside a task the valid keys are compacted into per-thread buffers laid out [dh][ld] (transposed, zero padded to
// whole vectors), so the loops over keys are unit-stride; padded keys cost nothing and get zero gradients. R query
// rows share one pass over the keys (the key / value vectors loaded once serve R rows, dk / dv are read and written
// once per R rows); the head width is a template argument for the widths MulT uses (4, 5, 8, 10, 16, 32, 64), so the
// per-row accumulators live in registers, and a run-time width otherwise.
//
// Vector width: Vectorized<float> has 16 lanes with AVX-512, 8 with AVX2 + FMA, and is a plain 8-float array
// otherwise (the compiler vectorises what it can). The same source is the kernel of all three (it replaced the
// hand-written intrinsics of attention_cpu.cpp, removed; the keep decisions are bit-identical to that source's and to
// dropout_keep_mask below).
//
// IEEE semantics (no -ffast-math): a NaN score (NaN in a valid query or key, +inf - +inf) propagates to the whole
// output row as in torch's softmax: the row max is NaN-propagating (at::vec::maximum) and exp keeps NaN; masking of
// padded lanes and dropped weights is a bitwise select, never a multiply by 0, so NaN does not leak into them either.

// ATen's vector headers pick their specialisations from CPU_CAPABILITY_AVX512 / CPU_CAPABILITY_AVX2, which PyTorch's
// own build sets per copy of its kernels; an extension gets neither (and the plain 8-float fallback). Set them from
// what the compiler targets (-march=native: the widest the CPU has; the tests' -mno-avx512f / -mno-avx2 the others),
// before any ATen header. AVX-512 as PyTorch builds it (F, BW, DQ, VL); AVX2 with FMA and F16C. The inline namespace
// at::vec::CPU_CAPABILITY gets a name of our own per width, so two builds loaded into one process (the tests load
// several) never resolve a weak inline symbol of one width to the other's code.
#if !defined(CPU_CAPABILITY)
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && defined(__AVX512VL__) && \
    defined(__FMA__)
#define CPU_CAPABILITY_AVX512 1
#define CPU_CAPABILITY affect_attention_avx512
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define CPU_CAPABILITY_AVX2 1
#define CPU_CAPABILITY affect_attention_avx2
#else
#define CPU_CAPABILITY affect_attention_default
#endif
#endif

#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
#define AFFECT_INT_VECTORS 1  // Vectorized<int32_t> is native (wrapping integer intrinsics)
#endif

#include <torch/extension.h>

#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

namespace {

using Vec = at::vec::Vectorized<float>;
using VecI = at::vec::Vectorized<int32_t>;

constexpr int kLanes = Vec::size();
constexpr int kMaxHeadDim = 64;
static_assert(VecI::size() == kLanes, "float and int32 vectors must have the same lane count");

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

// The 24 hash bits of key j in a row, given the Weyl step jw = j * 0x9E3779B9: murmur3's 32-bit finaliser
// (splitmix32) of key + jw. Kept when below the threshold round((1 - p) 2^24).
inline int32_t keep_bits(uint32_t key, uint32_t jw) {
  uint32_t x = key + jw;
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return static_cast<int32_t>(x >> 8);
}

inline bool keep(uint32_t key, int32_t j, int32_t threshold) {
  return keep_bits(key, static_cast<uint32_t>(j) * 0x9E3779B9u) < threshold;
}

inline int32_t keep_threshold(double p) {
  return static_cast<int32_t>(std::llround((1.0 - p) * static_cast<double>(1 << 24)));
}

#if defined(AFFECT_INT_VECTORS)
// Logical right shift of 32-bit lanes (Vectorized<int32_t>'s >> is arithmetic).
inline VecI shift_right(const VecI& x, int s) {
  return (x >> VecI(s)) & VecI(static_cast<int32_t>(0xFFFFFFFFu >> s));
}
#endif

// keep_bits < threshold for kLanes keys at once (their Weyl steps jw[0 .. kLanes - 1]): all-ones lanes where kept.
inline Vec keep_lanes(uint32_t key, const int32_t* jw, int32_t threshold) {
#if defined(AFFECT_INT_VECTORS)
  VecI x = VecI(static_cast<int32_t>(key)) + VecI::loadu(jw);
  x = x ^ shift_right(x, 16);
  x = x * VecI(static_cast<int32_t>(0x85EBCA6Bu));
  x = x ^ shift_right(x, 13);
  x = x * VecI(static_cast<int32_t>(0xC2B2AE35u));
  x = x ^ shift_right(x, 16);
  return at::vec::cast<float>(shift_right(x, 8) < VecI(threshold));
#else
  // The array fallback's int32 arithmetic is C++ signed arithmetic, whose overflow is undefined: hash per lane in
  // uint32 instead.
  __at_align__ int32_t bits[kLanes];
  for (int l = 0; l < kLanes; ++l) bits[l] = keep_bits(key, static_cast<uint32_t>(jw[l])) < threshold ? -1 : 0;
  return at::vec::cast<float>(VecI::loadu(bits));
#endif
}

// 2^n for the integer-valued lanes n (|n| <= 127; other lanes give some finite or infinite value, and exp_nonpos
// multiplies a NaN into those).
inline Vec pow2n(const Vec& n) {
#if defined(AFFECT_INT_VECTORS)
  return at::vec::cast<float>((at::vec::convert_to_int_of_same_size(n) + VecI(127)) << VecI(23));
#else
  __at_align__ float nf[kLanes];
  __at_align__ int32_t bits[kLanes];
  n.store(nf);
  for (int l = 0; l < kLanes; ++l) {  // no float -> int conversion of NaN and no signed overflow (both undefined)
    const float c = nf[l] == nf[l] ? std::min(std::max(nf[l], -127.0f), 128.0f) : 0.0f;
    bits[l] = (static_cast<int32_t>(c) + 127) << 23;
  }
  return at::vec::cast<float>(VecI::loadu(bits));
#endif
}

// exp(x) for x <= 0 (Cephes expf: range reduction by n ln 2 in two parts, degree-5 polynomial, scale by 2^n; within
// 2 ulp), the polynomial of the removed attention_cpu.cpp's exp512 / exp256 in Vectorized operations. x below -87 gives exp(-87)
// (callers mask padded lanes); NaN gives NaN (clamp_min keeps NaN, the polynomial carries it).
inline Vec exp_nonpos(Vec x) {
  x = at::vec::clamp_min(x, Vec(-87.0f));
  const Vec n = (x * Vec(1.44269504088896341f)).round();
  Vec r = at::vec::fmadd(n, Vec(-0.693359375f), x);
  r = at::vec::fmadd(n, Vec(2.12194440e-4f), r);
  Vec p(1.9875691500e-4f);
  p = at::vec::fmadd(p, r, Vec(1.3981999507e-3f));
  p = at::vec::fmadd(p, r, Vec(8.3334519073e-3f));
  p = at::vec::fmadd(p, r, Vec(4.1665795894e-2f));
  p = at::vec::fmadd(p, r, Vec(1.6666665459e-1f));
  p = at::vec::fmadd(p, r, Vec(5.0000001201e-1f));
  const Vec e = at::vec::fmadd(p, r * r, r) + Vec(1.0f);
  return e * pow2n(n);
}

inline float hsum(const Vec& v) {
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return a + b; }, v);
}

inline float hmax(const Vec& v) {  // NaN if any lane is NaN
  return at::vec::vec_reduce_all<float>([](const Vec& a, const Vec& b) { return at::vec::maximum(a, b); }, v);
}

// All-ones lanes for the keys of the last, partial vector of n keys (none when n is a multiple of kLanes).
inline Vec tail_mask(int64_t n) {
  const int64_t rem = n % kLanes;
  __at_align__ int32_t bits[kLanes];
  for (int l = 0; l < kLanes; ++l) bits[l] = l < rem ? -1 : 0;
  return at::vec::cast<float>(VecI::loadu(bits));
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
  const bool* valid;   // [B, Lk], true = valid key
  const bool* qvalid;  // [B, Lq], true = a query row to compute; nullptr: every row
  inline bool row_on(int64_t b, int64_t i) const { return qvalid == nullptr || qvalid[b * Lq + i]; }
};

// Per-thread buffers, reused over the (b, h) tasks of one parallel chunk.
struct Buffers {
  std::vector<float> kt, vt, dkt, dvt, s;
  std::vector<int32_t> idx, jw, rows;  // jw: the Weyl steps idx * 0x9E3779B9 of the keep decisions
  explicit Buffers(const Problem& pr, bool backward) {
    const int64_t lp = (pr.Lk + kLanes - 1) / kLanes * kLanes + kLanes;  // + the row padding of gather_keys
    kt.resize(pr.dh * lp);
    vt.resize(pr.dh * lp);
    s.resize(4 * lp);  // scores of up to 4 query rows per pass (forward)
    idx.resize(lp);
    jw.resize(lp);
    rows.resize(pr.Lq);
    if (backward) {
      dkt.resize(pr.dh * lp);
      dvt.resize(pr.dh * lp);
    }
  }
};

// Compacts sample b's valid keys of head h into kt (pre-scaled by 1/sqrt(dh)) and vt, both [dh][ld]: np = n
// rounded up to kLanes, ld = np + kLanes (one vector more, so that rows np * 4 bytes apart, 2 KiB for 512 keys, do
// not all fall into the same few L1 sets), zero padding, idx padded with 0 and jw = idx * 0x9E3779B9.
inline int64_t gather_keys(const Problem& pr, const View4& k, const View4& v, int64_t b, int64_t h, Buffers& buf,
                           int64_t* np_out, int64_t* ld_out) {
  const bool* valid = pr.valid + b * pr.Lk;
  int64_t n = 0;
  for (int64_t j = 0; j < pr.Lk; ++j)
    if (valid[j]) buf.idx[n++] = static_cast<int32_t>(j);
  const int64_t np = (n + kLanes - 1) / kLanes * kLanes;
  const int64_t ld = np + kLanes;
  for (int64_t t = n; t < np; ++t) buf.idx[t] = 0;
  for (int64_t t = 0; t < np; ++t) buf.jw[t] = static_cast<int32_t>(static_cast<uint32_t>(buf.idx[t]) * 0x9E3779B9u);
  std::fill(buf.kt.begin(), buf.kt.begin() + pr.dh * ld, 0.0f);
  std::fill(buf.vt.begin(), buf.vt.begin() + pr.dh * ld, 0.0f);
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

// Query rows per pass. AVX-512 (32 registers): the forward keeps R * DH output accumulators in registers (<= 20),
// the backward R * DH dq accumulators beside the per-row vectors (R * DH <= 10). 16 registers (AVX2, measured on
// AMD Zen 2): R * DH <= 10 in the forward; the backward takes two rows up to DH 10 (the dq accumulators spill a
// little, but dk / dv are read and written once per two rows: 1.4x faster than one row at DH 10). A run-time head
// width (DH = 0): one row.
#if defined(CPU_CAPABILITY_AVX512)
constexpr int fwd_rows_per_pass(int dh) { return dh == 0 ? 1 : (dh <= 5 ? 4 : (dh <= 10 ? 2 : 1)); }
constexpr int bwd_rows_per_pass(int dh) { return dh == 0 ? 1 : (dh <= 5 ? 2 : 1); }
#else
constexpr int fwd_rows_per_pass(int dh) { return dh == 0 ? 1 : (dh <= 5 ? 2 : 1); }
constexpr int bwd_rows_per_pass(int dh) { return dh == 0 ? 1 : (dh <= 10 ? 2 : 1); }
#endif

// Query rows rows[0 .. R - 1] of task (b, h): one pass for the scores and their max, one fused pass for exp, the
// row sums, the keep decisions and the output accumulators. DH = 0: the head width pr.dh, known at run time.
template <int DH, int R>
inline void forward_rows(const Problem& pr, const View4& q, const View4& out, float* lse, int64_t b, int64_t h,
                         const int32_t* rows, int64_t n, int64_t np, int64_t ld, const Vec& tail, Buffers& buf) {
  constexpr int DA = DH > 0 ? DH : kMaxHeadDim;
  const int dh = DH > 0 ? DH : static_cast<int>(pr.dh);
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict s = buf.s.data();  // [R][ld]
  const int64_t nfull = n / kLanes * kLanes;  // keys in whole vectors; [nfull, np) is the partial last one
  float qi[R][DA];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) qi[r][d] = *q.at(b, h, rows[r], d);
  const Vec neg_inf(-INFINITY);
  Vec mv[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) mv[r] = neg_inf;
  auto score_block = [&](int64_t t, auto is_tail) {
    Vec acc[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) acc[r] = Vec(0.0f);
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) {
      const Vec kv = Vec::loadu(kt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) acc[r] = at::vec::fmadd(Vec(qi[r][d]), kv, acc[r]);
    }
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      if constexpr (decltype(is_tail)::value) acc[r] = Vec::blendv(neg_inf, acc[r], tail);
      acc[r].store(s + r * ld + t);
      mv[r] = at::vec::maximum(mv[r], acc[r]);
    }
  };
  int64_t t = 0;
  for (; t < nfull; t += kLanes) score_block(t, std::false_type{});
  if (t < np) score_block(t, std::true_type{});

  Vec m[R], l[R], o[R][DA];
  float mrow[R];
  uint32_t key[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    mrow[r] = hmax(mv[r]);
    m[r] = Vec(mrow[r]);
    l[r] = Vec(0.0f);
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) o[r][d] = Vec(0.0f);
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  auto weight_block = [&](int64_t t, auto is_tail) {
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      Vec e = exp_nonpos(Vec::loadu(s + r * ld + t) - m[r]);
      if constexpr (decltype(is_tail)::value) e = e & tail;
      l[r] = l[r] + e;
      if (pr.dropping) e = e & keep_lanes(key[r], jw + t, pr.threshold);
#pragma GCC unroll 64
      for (int d = 0; d < dh; ++d) o[r][d] = at::vec::fmadd(e, Vec::loadu(vt + d * ld + t), o[r][d]);
    }
  };
  for (t = 0; t < nfull; t += kLanes) weight_block(t, std::false_type{});
  if (t < np) weight_block(t, std::true_type{});
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    const float lsum = hsum(l[r]);
    const float norm = pr.drop_scale / lsum;
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) *out.at(b, h, rows[r], d) = hsum(o[r][d]) * norm;
    lse[(b * pr.H + h) * pr.Lq + rows[r]] = mrow[r] + std::log(lsum);
  }
}

// One pass over the keys per R rows: D_i = sum_j P_j g_j equals dO_i . out_i (out_i = sum_j P_j z_j v_j), so it is
// known before the pass (as in FlashAttention-2) and ds, dq, dk and dv come out of the same loop.
template <int DH, int R>
inline void backward_rows(const Problem& pr, const View4& q, const View4& dout, const View4& out, const float* lse,
                          const View4& dq, int64_t b, int64_t h, const int32_t* rows, int64_t n, int64_t np,
                          int64_t ld, const Vec& tail, Buffers& buf) {
  constexpr int DA = DH > 0 ? DH : kMaxHeadDim;
  const int dh = DH > 0 ? DH : static_cast<int>(pr.dh);
  const float* __restrict kt = buf.kt.data();
  const float* __restrict vt = buf.vt.data();
  const int32_t* __restrict jw = buf.jw.data();
  float* __restrict dkt = buf.dkt.data();
  float* __restrict dvt = buf.dvt.data();
  const int64_t nfull = n / kLanes * kLanes;
  float qi[R][DA], doi[R][DA];
  Vec lsev[R], neg_d[R], dqa[R][DA];
  uint32_t key[R];
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r) {
    float dsum = 0.0f;
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) {
      qi[r][d] = *q.at(b, h, rows[r], d);
      doi[r][d] = *dout.at(b, h, rows[r], d);
      dsum += doi[r][d] * *out.at(b, h, rows[r], d);
      dqa[r][d] = Vec(0.0f);
    }
    lsev[r] = Vec(lse[(b * pr.H + h) * pr.Lq + rows[r]]);
    neg_d[r] = Vec(-dsum);
    key[r] = pr.dropping ? row_key(pr.seed, b, h, rows[r]) : 0u;
  }
  const Vec zs(pr.drop_scale);
  auto block = [&](int64_t t, auto is_tail) {
    Vec sc[R], gd[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) sc[r] = gd[r] = Vec(0.0f);
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) {
      const Vec kv = Vec::loadu(kt + d * ld + t);
      const Vec vv = Vec::loadu(vt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        sc[r] = at::vec::fmadd(Vec(qi[r][d]), kv, sc[r]);
        gd[r] = at::vec::fmadd(Vec(doi[r][d]), vv, gd[r]);
      }
    }
    Vec ds[R], pz[R];
#pragma GCC unroll 64
    for (int r = 0; r < R; ++r) {
      Vec p = exp_nonpos(sc[r] - lsev[r]);
      if constexpr (decltype(is_tail)::value) p = p & tail;
      pz[r] = p * zs;
      if (pr.dropping) pz[r] = pz[r] & keep_lanes(key[r], jw + t, pr.threshold);
      ds[r] = at::vec::fmadd(pz[r], gd[r], p * neg_d[r]);  // P (z dO.v - D)
      if constexpr (decltype(is_tail)::value) ds[r] = ds[r] & tail;  // padded lanes: 0 even for an infinite D
    }
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) {
      const Vec kv = Vec::loadu(kt + d * ld + t);
      Vec dk = Vec::loadu(dkt + d * ld + t);
      Vec dv = Vec::loadu(dvt + d * ld + t);
#pragma GCC unroll 64
      for (int r = 0; r < R; ++r) {
        dqa[r][d] = at::vec::fmadd(ds[r], kv, dqa[r][d]);
        dk = at::vec::fmadd(ds[r], Vec(qi[r][d]), dk);
        dv = at::vec::fmadd(pz[r], Vec(doi[r][d]), dv);
      }
      dk.store(dkt + d * ld + t);
      dv.store(dvt + d * ld + t);
    }
  };
  int64_t t = 0;
  for (; t < nfull; t += kLanes) block(t, std::false_type{});
  if (t < np) block(t, std::true_type{});
#pragma GCC unroll 64
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 64
    for (int d = 0; d < dh; ++d) *dq.at(b, h, rows[r], d) = hsum(dqa[r][d]);  // kt carries the 1/sqrt(dh)
}

// The query rows of sample b to compute, into buf.rows; returns their count.
inline int64_t query_rows(const Problem& pr, int64_t b, Buffers& buf) {
  int64_t nr = 0;
  for (int64_t i = 0; i < pr.Lq; ++i)
    if (pr.row_on(b, i)) buf.rows[nr++] = static_cast<int32_t>(i);
  return nr;
}

template <int DH>
void forward_task(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& out, float* lse,
                  int64_t b, int64_t h, Buffers& buf) {
  const int64_t dh = pr.dh;
  int64_t np = 0, ld = 0;
  const int64_t n = gather_keys(pr, k, v, b, h, buf, &np, &ld);
  for (int64_t i = 0; i < pr.Lq; ++i) {  // no valid key (callers guarantee one) or a row not asked for: zero output
    if (n > 0 && pr.row_on(b, i)) continue;
    for (int64_t d = 0; d < dh; ++d) *out.at(b, h, i, d) = 0.0f;
    lse[(b * pr.H + h) * pr.Lq + i] = 0.0f;
  }
  if (n == 0) return;
  const int64_t nr = query_rows(pr, b, buf);
  const Vec tail = tail_mask(n);
  constexpr int R = fwd_rows_per_pass(DH);
  const int32_t* rows = buf.rows.data();
  int64_t g = 0;
  for (; g + R <= nr; g += R) forward_rows<DH, R>(pr, q, out, lse, b, h, rows + g, n, np, ld, tail, buf);
  if constexpr (R > 1)
    for (; g < nr; ++g) forward_rows<DH, 1>(pr, q, out, lse, b, h, rows + g, n, np, ld, tail, buf);
}

template <int DH>
void backward_task(const Problem& pr, const View4& q, const View4& k, const View4& v, const View4& dout,
                   const View4& out, const float* lse, const View4& dq, const View4& dk, const View4& dv, int64_t b,
                   int64_t h, Buffers& buf) {
  const int64_t dh = pr.dh;
  int64_t np = 0, ld = 0;
  const int64_t n = gather_keys(pr, k, v, b, h, buf, &np, &ld);
  for (int64_t i = 0; i < pr.Lq; ++i) {  // no valid key or a row not asked for: zero gradient
    if (n > 0 && pr.row_on(b, i)) continue;
    for (int64_t d = 0; d < dh; ++d) *dq.at(b, h, i, d) = 0.0f;
  }
  if (n == 0) return;
  std::fill(buf.dkt.begin(), buf.dkt.begin() + dh * ld, 0.0f);
  std::fill(buf.dvt.begin(), buf.dvt.begin() + dh * ld, 0.0f);
  const int64_t nr = query_rows(pr, b, buf);
  const Vec tail = tail_mask(n);
  constexpr int R = bwd_rows_per_pass(DH);
  const int32_t* rows = buf.rows.data();
  int64_t g = 0;
  for (; g + R <= nr; g += R) backward_rows<DH, R>(pr, q, dout, out, lse, dq, b, h, rows + g, n, np, ld, tail, buf);
  if constexpr (R > 1)
    for (; g < nr; ++g) backward_rows<DH, 1>(pr, q, dout, out, lse, dq, b, h, rows + g, n, np, ld, tail, buf);
  const float* dkt = buf.dkt.data();
  const float* dvt = buf.dvt.data();
  for (int64_t t = 0; t < n; ++t) {
    const int64_t j = buf.idx[t];
    for (int64_t d = 0; d < dh; ++d) {
      *dk.at(b, h, j, d) = dkt[d * ld + t] * pr.scale;
      *dv.at(b, h, j, d) = dvt[d * ld + t];
    }
  }
}

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
    default: f(std::integral_constant<int, 0>{}); break;  // the width at run time
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
      for (int64_t task = begin; task < end; ++task)
        forward_task<decltype(DH)::value>(pr, vq, vk, vv, vo, lse_ptr, task % pr.B, task / pr.B, buf);
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
      for (int64_t task = begin; task < end; ++task)
        backward_task<decltype(DH)::value>(pr, vq, vk, vv, vdo, vout, lse_ptr, vdq, vdk, vdv, task % pr.B,
                                           task / pr.B, buf);
    });
  });
  return {dq, dk, dv};
}

// The kernel's keep decisions for every (b, h, i, j) (debug and tests): bool [B, h, Lq, Lk].
at::Tensor dropout_keep_mask(int64_t seed, int64_t B, int64_t H, int64_t Lq, int64_t Lk, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "fused attention: dropout must be in [0, 1)");
  at::Tensor keep_mask = at::empty({B, H, Lq, Lk}, at::TensorOptions().dtype(at::kBool));
  bool* out = keep_mask.data_ptr<bool>();
  const int32_t thr = keep_threshold(p);
  const uint64_t s = static_cast<uint64_t>(seed);
  at::parallel_for(0, B * H * Lq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t b = r / (H * Lq), h = (r / Lq) % H, i = r % Lq;
      const uint32_t key = row_key(s, b, h, i);
      for (int64_t j = 0; j < Lk; ++j) out[r * Lk + j] = keep(key, static_cast<int32_t>(j), thr);
    }
  });
  return keep_mask;
}

// The instruction set this build's vectors use (tests: which path -march=native / -mno-* gave).
std::string capability() {
#if defined(CPU_CAPABILITY_AVX512)
  return "avx512";
#elif defined(CPU_CAPABILITY_AVX2)
  return "avx2";
#else
  return "default";
#endif
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &attention_forward, "fused attention forward: (out [B,h,Lq,dh], lse [B,h,Lq])");
  m.def("backward", &attention_backward, "fused attention backward: (dq, dk, dv), into given tensors if any",
        py::arg("grad_out"), py::arg("q"), py::arg("k"), py::arg("v"), py::arg("valid"), py::arg("qvalid"),
        py::arg("out"), py::arg("lse"), py::arg("p"), py::arg("seed"), py::arg("dq") = py::none(),
        py::arg("dk") = py::none(), py::arg("dv") = py::none());
  m.def("dropout_keep_mask", &dropout_keep_mask, "the kernel's keep mask, bool [B,h,Lq,Lk]");
  m.def("capability", &capability, "the instruction set of this build's vectors: avx512, avx2 or default");
}
