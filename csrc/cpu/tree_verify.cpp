// CPU tree verification (docs/design.md 4.3): walk each tree from the root, reducing only the rows of the nodes
// visited (<= depth + 1 of the T rows), in float32, batch rows in parallel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "specdec/tree_checks.h"
#include "vocab_rows.h"

namespace specdec::cpu {
namespace {

// One vocabulary row as float32 in a buffer padded to whole vectors (padding = -inf).
template <class scalar_t>
void load_row(const scalar_t* src, int64_t V, float inv_temperature, std::vector<float>& row) {
  row.resize((V + kRowPadding - 1) / kRowPadding * kRowPadding);
  float* dst = row.data();
  for (int64_t v = 0; v < V; ++v) dst[v] = static_cast<float>(src[v]) * inv_temperature;
  for (size_t v = V; v < row.size(); ++v) dst[v] = -INFINITY;
}

// First index of the maximum (ties -> lowest index, like torch.argmax).
int64_t argmax_first(const VocabRows& rows, const std::vector<float>& row, int64_t V) {
  const float m = rows.max(row.data(), row.size());
  for (int64_t v = 0; v < V; ++v)
    if (row[v] == m) return v;
  return 0;  // all NaN: no maximum; the root's token is as good as any
}

// A row softmax leaves undefined (a NaN or +inf logit, or none above -inf: exp gives NaN there) still yields a
// valid verdict: those tokens get no mass. A row left with none accepts no child and samples token 0.
float without_nan(const VocabRows& rows, std::vector<float>& p) {
  for (float& value : p)
    if (std::isnan(value)) value = 0;
  return rows.sum(p.data(), p.size());
}

// p = exp(row - max) with top-k, then top-p applied, left unnormalised; returns its total mass
// (reference.target_probs is p / total).
float target_probs(const VocabRows& rows, std::vector<float>& p, int64_t V, int64_t top_k, double top_p,
                   std::vector<float>& scratch) {
  float total = rows.exp(p.data(), p.size(), rows.max(p.data(), p.size()));
  if (std::isnan(total)) total = without_nan(rows, p);  // before nth_element and sort, which need no NaN
  if (top_k > 0 && top_k < V) {
    scratch.assign(p.begin(), p.begin() + V);
    std::nth_element(scratch.begin(), scratch.begin() + (top_k - 1), scratch.end(), std::greater<float>());
    const float kth = scratch[top_k - 1];
    for (int64_t v = 0; v < V; ++v)
      if (p[v] < kth) p[v] = 0;
    total = rows.sum(p.data(), p.size());
  }
  if (top_p < 1.0 && total > 0) {  // with no mass there is no token to keep
    scratch.clear();
    for (int64_t v = 0; v < V; ++v)
      if (p[v] > 0) scratch.push_back(p[v]);
    std::sort(scratch.begin(), scratch.end(), std::greater<float>());
    const double budget = top_p * total;
    double before = 0;
    float cutoff = scratch.front();
    for (const float value : scratch) {
      if (before >= budget) break;
      cutoff = value;
      before += value;
    }
    for (int64_t v = 0; v < V; ++v)
      if (p[v] < cutoff) p[v] = 0;
    total = rows.sum(p.data(), p.size());
  }
  return total;
}

// Inverse CDF: the first token whose cumulative mass exceeds u * total, never a zero-mass one.
int64_t sample_from(const std::vector<float>& p, int64_t V, float total, double u) {
  const double target = u * total;
  double cdf = 0;
  int64_t last_nonzero = 0;
  for (int64_t v = 0; v < V; ++v) {
    if (p[v] <= 0) continue;
    cdf += p[v];
    last_nonzero = v;
    if (cdf > target) return v;
  }
  return last_nonzero;
}

// Greedy walk of every tree (rows in parallel): argmax only at the visited nodes.
template <class scalar_t>
void greedy_rows(const scalar_t* logits, const int64_t* tokens, const int64_t* parents, int64_t B, int64_t T,
                 int64_t V, int64_t* idx, int64_t* len, int64_t* bonus) {
  const VocabRows rows = vocab_rows();
#pragma omp parallel for schedule(dynamic) if (B > 1)
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> row;
    int64_t node = 0, n = 0, target = 0;
    while (true) {
      idx[b * T + n++] = node;
      load_row(logits + (b * T + node) * V, V, 1.0f, row);
      target = argmax_first(rows, row, V);
      int64_t next = -1;
      for (int64_t c = node + 1; c < T && next < 0; ++c)
        if (parents[b * T + c] == node && tokens[b * T + c] == target) next = c;
      if (next < 0) break;
      node = next;
    }
    len[b] = n;
    bonus[b] = target;
  }
}

struct SampleParams {
  float inv_temperature;
  double top_p;
  int64_t top_k;
};

// Recursive rejection sampling of every tree (rows in parallel); see reference.tree_verify_sample.
template <class scalar_t>
void sample_rows(const scalar_t* logits, const float* draft_probs, const float* uniforms, const int64_t* tokens,
                 const int64_t* parents, int64_t B, int64_t T, int64_t V, const SampleParams& params, int64_t* idx,
                 int64_t* len, int64_t* bonus) {
  const VocabRows rows = vocab_rows();
#pragma omp parallel for schedule(dynamic) if (B > 1)
  for (int64_t b = 0; b < B; ++b) {
    std::vector<float> prob, scratch;
    int64_t node = 0, n = 0;
    float total = 0;
    while (true) {
      idx[b * T + n++] = node;
      load_row(logits + (b * T + node) * V, V, params.inv_temperature, prob);
      total = target_probs(rows, prob, V, params.top_k, params.top_p, scratch);
      const float* draft = draft_probs != nullptr ? draft_probs + (b * T + node) * V : nullptr;
      int64_t accepted = -1;
      for (int64_t c = node + 1; c < T && accepted < 0; ++c) {
        if (parents[b * T + c] != node) continue;
        const int64_t x = tokens[b * T + c];
        const float u = uniforms[b * (T + 1) + c];
        if (draft == nullptr) {  // deterministic draft: accept with p(x), else remove x from p
          if (u * total < prob[x]) accepted = c;
          else {
            total -= prob[x];
            prob[x] = 0;
          }
        } else {  // sampled draft: accept with min(1, p / q), else p <- max(p - q, 0)
          if (prob[x] > 0 && u * draft[x] * total < prob[x]) accepted = c;
          else if (total > 0) {
            for (int64_t v = 0; v < V; ++v) prob[v] = std::max(prob[v] / total - draft[v], 0.0f);
            total = rows.sum(prob.data(), prob.size());
          }
        }
      }
      if (accepted < 0) break;
      node = accepted;
    }
    len[b] = n;
    bonus[b] = sample_from(prob, V, total, uniforms[b * (T + 1) + T]);
  }
}

struct Verdict {
  at::Tensor accept_idx, accept_len, bonus;
  Verdict(int64_t B, int64_t T, const at::TensorOptions& options)
      : accept_idx(at::full({B, T}, -1, options.dtype(at::kLong))),
        accept_len(at::zeros({B}, options.dtype(at::kLong))),
        bonus(at::zeros({B}, options.dtype(at::kLong))) {}
  std::tuple<at::Tensor, at::Tensor, at::Tensor> tuple() const { return {accept_idx, accept_len, bonus}; }
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_verify_greedy_cpu(const at::Tensor& tokens,
                                                                       const at::Tensor& parents,
                                                                       const at::Tensor& logits) {
  const at::Tensor p = check_tree(tokens, parents);
  check_tree_logits(logits, tokens);
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(2);
  const at::Tensor tok = tokens.contiguous(), lg = logits.contiguous();
  Verdict out(B, T, tokens.options());
  const int64_t *tp = tok.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>();
  int64_t *idx = out.accept_idx.data_ptr<int64_t>(), *len = out.accept_len.data_ptr<int64_t>(),
          *bonus = out.bonus.data_ptr<int64_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "tree_verify_greedy", [&] {
    greedy_rows(lg.data_ptr<scalar_t>(), tp, pp, B, T, V, idx, len, bonus);
  });
  return out.tuple();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> tree_verify_sample_cpu(const at::Tensor& tokens,
                                                                       const at::Tensor& parents,
                                                                       const at::Tensor& logits,
                                                                       const at::Tensor& uniforms, double temperature,
                                                                       double top_p, int64_t top_k,
                                                                       const std::optional<at::Tensor>& draft_probs) {
  const at::Tensor p = check_tree(tokens, parents);
  check_tree_logits(logits, tokens);
  check_tree_sample_args(tokens, logits, uniforms, temperature, top_p, top_k, draft_probs);
  const int64_t B = tokens.size(0), T = tokens.size(1), V = logits.size(2);
  const at::Tensor q = draft_probs.has_value() ? draft_probs->to(at::kFloat).contiguous() : at::Tensor();
  const at::Tensor tok = tokens.contiguous(), lg = logits.contiguous(), un = uniforms.contiguous();
  Verdict out(B, T, tokens.options());
  const int64_t *tp = tok.data_ptr<int64_t>(), *pp = p.data_ptr<int64_t>();
  const float* up = un.data_ptr<float>();
  const float* qp = q.defined() ? q.data_ptr<float>() : nullptr;
  int64_t *idx = out.accept_idx.data_ptr<int64_t>(), *len = out.accept_len.data_ptr<int64_t>(),
          *bonus = out.bonus.data_ptr<int64_t>();
  const SampleParams params{1.0f / static_cast<float>(temperature), top_p, top_k};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, lg.scalar_type(), "tree_verify_sample", [&] {
    sample_rows(lg.data_ptr<scalar_t>(), qp, up, tp, pp, B, T, V, params, idx, len, bonus);
  });
  return out.tuple();
}

}  // namespace

TORCH_LIBRARY_IMPL(specdec, CPU, m) {
  m.impl("tree_verify_greedy", &tree_verify_greedy_cpu);
  m.impl("tree_verify_sample", &tree_verify_sample_cpu);
}

}  // namespace specdec::cpu
