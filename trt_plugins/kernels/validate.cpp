// The contract's attribute and shape rules (docs/op-spec.md), with minfer.patterns.spec's messages
// word for word: tests/test_kernels_validate.py compares the two on random attribute sets.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "status.h"

namespace minfer {

namespace {

thread_local std::string last_error;

constexpr const char* kKindLabels[] = {"dense", "a_shape", "vertical_slash", "block_sparse"};
constexpr const char* kFieldNames[] = {"sink", "local", "vertical_size", "slash_size", "last_q", "top_k"};
constexpr int kNumFields = 6;
constexpr int64_t kInt32Max = 2147483647LL;

struct Range {
  bool taken;
  int64_t low, high;
};

// field ranges per kind, in kFieldNames order (spec.py's _FIELD_RANGES)
Range field_range(int kind, int field) {
  const Range no = {false, 0, 0};
  switch (kind) {
    case MINFER_A_SHAPE:
      if (field == 0) return {true, 0, kInt32Max};
      if (field == 1) return {true, 1, kInt32Max};
      return no;
    case MINFER_VERTICAL_SLASH:
      if (field == 0 || field == 2 || field == 3) return {true, 0, kInt32Max};
      if (field == 1) return {true, 1, kInt32Max};
      if (field == 4) return {true, 1, MINFER_MAX_LAST_Q};
      return no;
    case MINFER_BLOCK_SPARSE:
      if (field == 5) return {true, 1, kInt32Max};
      return no;
    default:
      return no;
  }
}

const int32_t* field_array(const minfer_pattern& p, int field) {
  const int32_t* arrays[] = {p.sink, p.local, p.vertical_size, p.slash_size, p.last_q, p.top_k};
  return arrays[field];
}

}  // namespace

minfer_status fail(minfer_status status, const std::string& message) {
  last_error = message;
  return status;
}

minfer_status ok() {
  last_error.clear();
  return MINFER_OK;
}

std::string python_float_repr(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  char digits[40];
  int precision = 1;
  for (; precision <= 17; ++precision) {  // shortest %e form that reads back exactly
    std::snprintf(digits, sizeof digits, "%.*e", precision - 1, value);
    if (std::strtod(digits, nullptr) == value) break;
  }
  // digits is "[-]d.ddde[+-]xx": split into sign, mantissa digits and decimal exponent
  std::string text(digits);
  std::string sign;
  if (text[0] == '-') {
    sign = "-";
    text = text.substr(1);
  }
  const size_t e = text.find('e');
  const int exponent = std::atoi(text.c_str() + e + 1);
  std::string mantissa;
  for (size_t i = 0; i < e; ++i)
    if (text[i] != '.') mantissa += text[i];
  while (mantissa.size() > 1 && mantissa.back() == '0') mantissa.pop_back();
  const int n = static_cast<int>(mantissa.size());
  if (exponent >= -4 && exponent < 16) {  // positional, always with a fractional part
    std::string out;
    if (exponent < 0) {
      out = "0." + std::string(-exponent - 1, '0') + mantissa;
    } else if (exponent + 1 >= n) {
      out = mantissa + std::string(exponent + 1 - n, '0') + ".0";
    } else {
      out = mantissa.substr(0, exponent + 1) + "." + mantissa.substr(exponent + 1);
    }
    return sign + out;
  }
  std::string out = mantissa.substr(0, 1);
  if (n > 1) out += "." + mantissa.substr(1);
  char exp_text[16];
  std::snprintf(exp_text, sizeof exp_text, "e%c%02d", exponent < 0 ? '-' : '+', std::abs(exponent));
  return sign + out + exp_text;
}

}  // namespace minfer

using minfer::fail;

extern "C" minfer_status minfer_validate_pattern(const minfer_pattern* pattern) {
  if (pattern == nullptr) return fail(MINFER_ERR_INVALID_PATTERN, "pattern is NULL");
  const minfer_pattern& p = *pattern;
  if (p.block_size != MINFER_BLOCK)
    return fail(MINFER_ERR_INVALID_PATTERN, "block_size must be 64, got " + std::to_string(p.block_size));
  if (!std::isfinite(p.scale) || !(p.scale > 0))
    return fail(MINFER_ERR_INVALID_PATTERN,
                "scale must be a finite number > 0, got " + minfer::python_float_repr(p.scale));
  if (p.num_heads < 0)
    return fail(MINFER_ERR_INVALID_PATTERN, "num_heads must be >= 0, got " + std::to_string(p.num_heads));
  if (p.num_heads > 0) {
    const int32_t* arrays[] = {p.kind, p.sink, p.local, p.vertical_size, p.slash_size, p.last_q, p.top_k};
    for (const int32_t* a : arrays)
      if (a == nullptr) return fail(MINFER_ERR_INVALID_PATTERN, "a per-head attribute array is NULL");
  }
  // spec.validate_attributes parses every head's kind before it checks any field
  for (int32_t h = 0; h < p.num_heads; ++h)
    if (p.kind[h] < 0 || p.kind[h] > 3)
      return fail(MINFER_ERR_INVALID_PATTERN, "head " + std::to_string(h) + ": unknown pattern kind " +
                                                  std::to_string(p.kind[h]) + "; expected 0..3");
  if (p.num_heads == 0) return fail(MINFER_ERR_INVALID_PATTERN, "layer: has no heads");
  for (int32_t h = 0; h < p.num_heads; ++h) {
    const int kind = p.kind[h];
    const std::string where = "head " + std::to_string(h) + " (" + minfer::kKindLabels[kind] + "): ";
    for (int f = 0; f < minfer::kNumFields; ++f) {
      const int64_t value = minfer::field_array(p, f)[h];
      const minfer::Range r = minfer::field_range(kind, f);
      const std::string name = minfer::kFieldNames[f];
      if (!r.taken) {
        if (value != 0)
          return fail(MINFER_ERR_INVALID_PATTERN,
                      where + name + " must be 0 for this kind, got " + std::to_string(value));
      } else if (value < r.low || value > r.high) {
        return fail(MINFER_ERR_INVALID_PATTERN, where + name + " must be in [" + std::to_string(r.low) + ", " +
                                                    std::to_string(r.high) + "], got " + std::to_string(value));
      }
    }
  }
  return minfer::ok();
}

extern "C" minfer_status minfer_validate_problem(const minfer_pattern* pattern, const minfer_problem* problem) {
  const minfer_status pattern_status = minfer_validate_pattern(pattern);
  if (pattern_status != MINFER_OK) return pattern_status;
  if (problem == nullptr) return fail(MINFER_ERR_INVALID_PROBLEM, "problem is NULL");
  const minfer_problem& s = *problem;
  if (s.dtype != MINFER_FLOAT16 && s.dtype != MINFER_BFLOAT16)
    return fail(MINFER_ERR_INVALID_PROBLEM, "dtype " + std::to_string(static_cast<int>(s.dtype)) +
                                                " is not supported (float16, bfloat16)");
  if (s.seq_len < 1 || s.batch < 1)
    return fail(MINFER_ERR_INVALID_PROBLEM,
                "B and S must be >= 1; got B=" + std::to_string(s.batch) + ", S=" + std::to_string(s.seq_len));
  if (s.num_kv_heads < 1 || s.num_q_heads % s.num_kv_heads != 0)
    return fail(MINFER_ERR_INVALID_PROBLEM, "query heads (" + std::to_string(s.num_q_heads) +
                                                ") must be a positive multiple of KV heads (" +
                                                std::to_string(s.num_kv_heads) + ")");
  if (s.head_dim != 64 && s.head_dim != 128)
    return fail(MINFER_ERR_INVALID_PROBLEM,
                "head_dim " + std::to_string(s.head_dim) + " is not supported; supported: (64, 128)");
  if (pattern->num_heads != s.num_q_heads)
    return fail(MINFER_ERR_INVALID_PROBLEM, "pattern has " + std::to_string(pattern->num_heads) +
                                                " heads but Q has " + std::to_string(s.num_q_heads) +
                                                " query heads");
  // the kernels' own limits
  if (s.num_q_heads > MINFER_MAX_HEADS)
    return fail(MINFER_ERR_INVALID_PROBLEM, "the kernels take at most " + std::to_string(MINFER_MAX_HEADS) +
                                                " query heads per layer, got " + std::to_string(s.num_q_heads));
  if (s.seq_len > (1LL << 30))
    return fail(MINFER_ERR_INVALID_PROBLEM,
                "the kernels take at most 2^30 tokens, got S=" + std::to_string(s.seq_len));
  return minfer::ok();
}

extern "C" const char* minfer_last_error(void) { return minfer::last_error.c_str(); }

extern "C" int32_t minfer_abi_version(void) { return MINFER_ABI_VERSION; }
