#pragma once
// String columns of a HuggingFace `datasets` folder (Dataset.save_to_disk),
// for the downstream tasks' questions and answers. Uses the bounds-checked
// Arrow IPC reader of arrow_source.hpp (walk_stream, FlatBuffer,
// RecordBatchView).
//
//   auto cols = doremi::read_arrow_text_columns("trivia_qa/validation", {"question", "answer.aliases"});
//   cols[0].row(7)  // {"Who ...?"}: a string column gives one value per row
//   cols[1].row(7)  // {"Paris", "paris"}: a list column gives its elements
//
// A path names a top-level column, and after '.' a field of a struct column
// ("answer.aliases"; "answers.text" where squad_v2's `answers` is a struct of
// lists). Supported leaf types: utf8, large_utf8 (datasets' Value("string"))
// and list / large_list of them (Sequence(Value("string"))). Nulls (a null
// string, list, list element or struct) are a doremi::Error naming the file,
// column and row: `datasets` would hand them to the templates as None, which
// the public code would print as "None" or fail on. Strings are returned as
// stored (pyarrow writes valid UTF-8).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "doremi/core/error.hpp"
#include "doremi/core/mapped_file.hpp"
#include "doremi/data/arrow_source.hpp"

namespace doremi {

// One column as a list of strings per row: row i is values[offsets[i], offsets[i+1]).
struct TextColumn {
  std::vector<std::string> values;
  std::vector<std::size_t> offsets{0};

  std::size_t rows() const { return offsets.size() - 1; }
  std::span<const std::string> row(std::size_t i) const {
    if (i >= rows()) fail("text column row {} out of range ({} rows)", i, rows());
    return std::span<const std::string>(values).subspan(offsets[i], offsets[i + 1] - offsets[i]);
  }
  void end_row() { offsets.push_back(values.size()); }
};

namespace detail::arrow {

// Where a (possibly nested) string column sits in each record batch.
struct TextPlan {
  std::string path;
  std::vector<std::uint64_t> struct_nodes, struct_buffers;  // enclosing structs (validity checks)
  std::uint64_t node = 0, buffer = 0, views_before = 0;     // the leaf (a string, or a list of strings)
  bool is_list = false;
  std::uint8_t list_tag = t_list, string_tag = t_utf8;
  std::uint64_t total_nodes = 0;
};

inline TextPlan plan_text_column(const FlatBuffer& fb, const FlatBuffer::Table& schema, std::int16_t version,
                                 const std::string& file, const std::string& path) {
  if (fb.scalar<std::int16_t>(schema, id::schema_endianness, 0) != 0)
    fail("{}: the Arrow schema is big-endian; only little-endian data is supported", file);
  const auto fields = fb.vector(schema, id::schema_fields, 4, "schema fields");
  if (!fields || fields->size == 0) fail("{}: the Arrow schema has no fields (expected a '{}' column)", file, path);
  std::vector<std::string> parts;
  for (std::size_t a = 0;;) {
    const auto b = path.find('.', a);
    parts.push_back(path.substr(a, b == std::string::npos ? std::string::npos : b - a));
    if (b == std::string::npos) break;
    a = b + 1;
  }
  TextPlan plan;
  plan.path = path;
  std::uint64_t budget = 100000;
  Layout all;
  std::optional<FlatBuffer::Table> found;
  std::string names;
  for (std::uint32_t i = 0; i < fields->size; ++i) {
    const auto f = fb.table_in(*fields, i, "schema field");
    const auto name = fb.string(f, id::field_name).value_or("");
    names += fmt::format("{}'{}'", i ? ", " : "", name);
    if (!found && name == parts[0]) {
      found = f;
      plan.node = all.nodes;
      plan.buffer = all.buffers;
      plan.views_before = all.views;
    }
    add_layout(fb, f, version, 0, budget, all);
  }
  plan.total_nodes = all.nodes;
  if (!found) fail("{}: no column '{}' in the dataset (columns: {})", file, parts[0], names);
  FlatBuffer::Table f = *found;
  for (std::size_t d = 1; d < parts.size(); ++d) {
    const auto tag = fb.scalar<std::uint8_t>(f, id::field_type_type, 0);
    if (tag != t_struct)
      fail("{}: column '{}' has type {}, not a struct with a field '{}' (reading '{}')", file, parts[d - 1],
           type_name(tag), parts[d], path);
    plan.struct_nodes.push_back(plan.node);
    plan.struct_buffers.push_back(plan.buffer);
    std::uint64_t node = plan.node + 1, buffer = plan.buffer + 1;  // a struct's own node and validity buffer
    const auto children = fb.vector(f, id::field_children, 4, "children");
    std::optional<FlatBuffer::Table> child;
    std::string child_names;
    for (std::uint32_t i = 0; children && i < children->size; ++i) {
      const auto c = fb.table_in(*children, i, "child field");
      const auto name = fb.string(c, id::field_name).value_or("");
      child_names += fmt::format("{}'{}'", i ? ", " : "", name);
      if (name == parts[d]) {
        child = c;
        break;
      }
      Layout l;
      std::uint64_t b2 = 100000;
      add_layout(fb, c, version, 1, b2, l);
      if (l.views) fail("{}: struct '{}' holds view-typed fields, which this reader does not support", file, path);
      node += l.nodes;
      buffer += l.buffers;
    }
    if (!child)
      fail("{}: struct column '{}' has no field '{}' (fields: {})", file, parts[d - 1], parts[d], child_names);
    f = *child;
    plan.node = node;
    plan.buffer = buffer;
  }
  auto wrong = [&](std::string_view what) {
    fail("{}: column '{}' has type {}, expected a string or a list of strings: {}", file, path,
         type_name(fb.scalar<std::uint8_t>(f, id::field_type_type, 0)), what);
  };
  if (fb.field(f, id::field_dictionary, 4)) wrong("it is dictionary-encoded");
  const auto tag = fb.scalar<std::uint8_t>(f, id::field_type_type, 0);
  if (tag == t_utf8 || tag == t_large_utf8) {
    plan.string_tag = tag;
    return plan;
  }
  if (tag != t_list && tag != t_large_list) wrong("not a string or list");
  plan.is_list = true;
  plan.list_tag = tag;
  const auto children = fb.vector(f, id::field_children, 4, "children");
  if (!children || children->size != 1) wrong("a list needs exactly one child field");
  const auto child = fb.table_in(*children, 0, "child field");
  if (fb.field(child, id::field_dictionary, 4)) wrong("its values are dictionary-encoded");
  const auto child_tag = fb.scalar<std::uint8_t>(child, id::field_type_type, 0);
  if (child_tag != t_utf8 && child_tag != t_large_utf8)
    wrong(fmt::format("its values are {}, not strings", type_name(child_tag)));
  plan.string_tag = child_tag;
  return plan;
}

// Offset r of an offsets buffer of width w (4 or 8 bytes).
inline std::int64_t offset_at(const std::byte* p, std::uint64_t w, std::uint64_t r) {
  return w == 8 ? load<std::int64_t>(p + 8 * r) : std::int64_t(load<std::int32_t>(p + 4 * r));
}

// Reads one record batch's rows of the column into `out`; first_row numbers rows in messages.
inline void read_text_batch(const RecordBatchView& v, const TextPlan& p, std::uint64_t first_row, TextColumn& out) {
  const std::string& col = p.path;
  if (!v.nodes || v.nodes->size != p.total_nodes)
    fail("{}: record batch at byte {} has {} field nodes, but the schema needs {}", v.file, v.pos,
         v.nodes ? v.nodes->size : 0, p.total_nodes);
  const std::uint64_t shift = v.variadic_shift(p.views_before);
  const auto rows = std::uint64_t(v.rows);
  // A node's validity: the first null row (of `len` rows), found from its bitmap.
  auto check_nulls = [&](std::uint64_t node, std::uint64_t buffer, std::string_view what,
                         std::uint64_t (*row_of)(std::uint64_t, const void*), const void* ctx) {
    const auto [len, nulls] = v.node(node);
    if (len < 0 || nulls < 0 || nulls > len)
      fail("{}: record batch at byte {}: column '{}': {} node has length {} and {} nulls", v.file, v.pos, col, what,
           len, nulls);
    if (nulls == 0) return std::uint64_t(len);
    const auto [bits, n] = v.buffer(buffer, (std::uint64_t(len) + 7) / 8, "validity", col);
    for (std::uint64_t r = 0; r < std::uint64_t(len); ++r)
      if (((std::uint8_t(bits[r / 8]) >> (r % 8)) & 1) == 0)
        fail("{}: column '{}' is null in row {} ({}); the tasks need a value in every row", v.file, col,
             first_row + row_of(r, ctx), what);
    fail("{}: record batch at byte {}: column '{}' counts {} nulls but its validity bitmap has none", v.file, v.pos,
         col, nulls);
  };
  auto same_row = [](std::uint64_t r, const void*) { return r; };
  for (std::size_t s = 0; s < p.struct_nodes.size(); ++s) {
    const auto len = check_nulls(p.struct_nodes[s] , p.struct_buffers[s] + shift, "a struct", same_row, nullptr);
    if (len < rows)
      fail("{}: record batch at byte {}: struct of column '{}' has {} rows, the batch {}", v.file, v.pos, col, len,
           rows);
  }
  const std::uint64_t sw = p.string_tag == t_large_utf8 ? 8 : 4;
  // Strings [lo, hi) of a utf8 node whose offsets and data are buffers b+1, b+2.
  struct Strings {
    const std::byte* offsets = nullptr;
    const std::byte* data = nullptr;
    std::uint64_t data_len = 0, count = 0;
  };
  auto strings_at = [&](std::uint64_t node, std::uint64_t buffer, std::uint64_t min_count) {
    Strings s;
    const auto [len, nulls] = v.node(node);
    (void)nulls;
    if (len < 0 || std::uint64_t(len) < min_count)
      fail("{}: record batch at byte {}: column '{}' has {} strings, expected at least {}", v.file, v.pos, col, len,
           min_count);
    s.count = std::uint64_t(len);
    s.offsets = v.buffer(buffer + 1, (s.count + 1) * sw, "offsets", col).first;
    const auto [d, dn] = v.buffer(buffer + 2, 0, "data", col);
    s.data = d;
    s.data_len = dn;
    return s;
  };
  auto get = [&](const Strings& s, std::uint64_t k) {
    const auto lo = offset_at(s.offsets, sw, k), hi = offset_at(s.offsets, sw, k + 1);
    if (lo < 0 || hi < lo || std::uint64_t(hi) > s.data_len)
      fail("{}: record batch at byte {}: column '{}' has corrupt string offsets [{}, {}) for string {} ({} data "
           "bytes)",
           v.file, v.pos, col, lo, hi, k, s.data_len);
    return std::string(reinterpret_cast<const char*>(s.data) + lo, std::size_t(hi - lo));
  };
  if (!p.is_list) {
    check_nulls(p.node, p.buffer + shift, "a string", same_row, nullptr);
    const auto s = strings_at(p.node, p.buffer + shift, rows);
    for (std::uint64_t r = 0; r < rows; ++r) {
      out.values.push_back(get(s, r));
      out.end_row();
    }
    return;
  }
  check_nulls(p.node, p.buffer + shift, "a list", same_row, nullptr);
  const auto [list_len, list_nulls] = v.node(p.node);
  (void)list_nulls;
  if (list_len < 0 || std::uint64_t(list_len) < rows)
    fail("{}: record batch at byte {}: column '{}' has {} rows, the batch {}", v.file, v.pos, col, list_len, rows);
  const std::uint64_t lw = p.list_tag == t_large_list ? 8 : 4;
  const auto* loffs = v.buffer(p.buffer + shift + 1, (rows + 1) * lw, "list offsets", col).first;
  const auto s = strings_at(p.node + 1, p.buffer + shift + 2, 0);
  // A null element: name the row whose list holds it.
  struct Ctx {
    const std::byte* loffs;
    std::uint64_t lw, rows;
  } ctx{loffs, lw, rows};
  check_nulls(p.node + 1, p.buffer + shift + 2, "a list element",
              [](std::uint64_t e, const void* c) {
                const auto& x = *static_cast<const Ctx*>(c);
                std::uint64_t r = 0;
                while (r + 1 < x.rows && offset_at(x.loffs, x.lw, r + 1) <= std::int64_t(e)) ++r;
                return r;
              },
              &ctx);
  for (std::uint64_t r = 0; r < rows; ++r) {
    const auto lo = offset_at(loffs, lw, r), hi = offset_at(loffs, lw, r + 1);
    if (lo < 0 || hi < lo || std::uint64_t(hi) > s.count)
      fail("{}: record batch at byte {}: column '{}' has corrupt list offsets [{}, {}) in row {} ({} strings)",
           v.file, v.pos, col, lo, hi, first_row + r, s.count);
    for (auto k = lo; k < hi; ++k) out.values.push_back(get(s, std::uint64_t(k)));
    out.end_row();
  }
}

}  // namespace detail::arrow

// Reads the columns `paths` of one dataset folder (state.json + data-*.arrow,
// as ArrowSource::data_files finds them), all rows, in order.
inline std::vector<TextColumn> read_arrow_text_columns(const std::filesystem::path& folder,
                                                       const std::vector<std::string>& paths) {
  std::vector<TextColumn> out(paths.size());
  std::uint64_t first_row = 0;
  for (const auto& file : ArrowSource::data_files(folder)) {
    MappedFile mf(file, "Arrow data file");
    std::vector<detail::arrow::TextPlan> plans;
    std::uint64_t rows = 0;
    detail::arrow::walk_stream(
        mf,
        [&](const detail::arrow::FlatBuffer& fb, const detail::arrow::FlatBuffer::Table& schema, std::int16_t version) {
          for (const auto& p : paths)
            plans.push_back(detail::arrow::plan_text_column(fb, schema, version, file.string(), p));
        },
        [&](const detail::arrow::RecordBatchView& v) {
          for (std::size_t c = 0; c < paths.size(); ++c)
            detail::arrow::read_text_batch(v, plans[c], first_row + rows, out[c]);
          rows += std::uint64_t(v.rows);
        });
    first_row += rows;
  }
  return out;
}

}  // namespace doremi
