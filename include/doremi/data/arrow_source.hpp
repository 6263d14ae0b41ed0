#pragma once
// HuggingFace `datasets` folders (Dataset.save_to_disk) as token sources,
// read without Arrow C++ (Debian 12 has none): a small, bounds-checked reader
// for the Arrow IPC *stream* format and just the flatbuffer tables it needs.
//
//   <domain>/state.json                 {"_data_files": [{"filename": "data-00000-of-00002.arrow"}, ...], ...}
//   <domain>/dataset_info.json          features etc. (not needed here)
//   <domain>/data-0000K-of-0000N.arrow  Arrow IPC stream: schema, record batches, end-of-stream
//
//   doremi::ArrowSource src("pile/train/ArXiv");         // one dataset, or a folder of shard datasets
//   std::vector<std::int32_t> t(src.length(0));
//   src.read(0, 0, t);
//
//   auto split = doremi::open_arrow_split("pile", "validation");   // pile/validation/<domain>/
//   // split.domains (sorted) and split.sources, one ArrowSource per domain
//
// The token column (default `input_ids`) may be list<intN>, large_list<intN>
// or fixed_size_list<intN> (datasets' Sequence(Value("int32"|"int64"|...),
// with or without a length); ids are returned as int32 (wider values that do
// not fit are an error when read). Other columns are skipped.
//
// Stream framing (Arrow >= 0.15): each message is the continuation marker
// 0xFFFFFFFF, an int32 metadata length, a flatbuffer `Message` (padded), then
// `bodyLength` bytes of body; 0xFFFFFFFF 0x00000000 ends the stream. This
// reader requires the end-of-stream marker (pyarrow, and so `datasets`,
// always writes it), which makes a file truncated at a message boundary an
// error instead of silently shorter data. Compressed bodies (LZ4/ZSTD) are
// rejected: `datasets` does not compress.
//
// Memory: the .arrow files are memory-mapped; opening walks the message
// headers and keeps one small record per record batch (O(#batches)). List
// offsets are checked when a row is read (O(1) per row), so opening a large
// dataset does not touch its data pages. Every flatbuffer offset, vector
// length and body buffer is bounds-checked: corrupt input raises
// doremi::Error naming the file, never reads outside the mapping.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "doremi/core/error.hpp"
#include "doremi/core/json.hpp"
#include "doremi/core/mapped_file.hpp"
#include "doremi/data/source.hpp"
#include "doremi/data/token_check.hpp"

namespace doremi {

struct ArrowOptions {
  // The list-of-integers column holding the token ids.
  std::string column = "input_ids";
  // When > 0, read() checks every token it returns against [0, vocab_size).
  std::int64_t vocab_size = 0;
};

namespace detail::arrow {

template <class T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

// A read-only view of one flatbuffer (a message's metadata) in which every
// access is checked against the buffer; `where` prefixes errors ("FILE:
// message at byte N").
class FlatBuffer {
 public:
  struct Table {
    std::size_t pos = 0, vtable = 0;
    std::uint16_t vtable_size = 0;
  };
  struct Vector {
    std::size_t pos = 0;  // first element
    std::uint32_t size = 0;
  };

  FlatBuffer(std::span<const std::byte> bytes, std::string where) : b_(bytes), where_(std::move(where)) {}

  [[noreturn]] void corrupt(std::string_view what) const { fail("{}: corrupt flatbuffer metadata: {}", where_, what); }
  const std::string& where() const { return where_; }

  template <class T>
  T at(std::size_t pos) const {
    if (pos > b_.size() || sizeof(T) > b_.size() - pos)
      corrupt(fmt::format("read of {} bytes at offset {} beyond the {}-byte buffer", sizeof(T), pos, b_.size()));
    return load<T>(b_.data() + pos);
  }

  Table root() const { return table_at(at<std::uint32_t>(0), "root table"); }

  Table table_at(std::size_t pos, std::string_view what) const {
    const auto soff = at<std::int32_t>(pos);
    const std::int64_t vt = std::int64_t(pos) - std::int64_t(soff);
    if (vt < 0 || std::uint64_t(vt) > b_.size())
      corrupt(fmt::format("{} at offset {} has its vtable at {}, outside the buffer", what, pos, vt));
    Table t;
    t.pos = pos;
    t.vtable = std::size_t(vt);
    t.vtable_size = at<std::uint16_t>(t.vtable);
    const auto table_size = at<std::uint16_t>(t.vtable + 2);
    if (t.vtable_size < 4 || t.vtable_size % 2 != 0 || t.vtable + t.vtable_size > b_.size())
      corrupt(fmt::format("{} at offset {}: invalid vtable size {}", what, pos, t.vtable_size));
    if (table_size < 4 || pos + table_size > b_.size())
      corrupt(fmt::format("{} at offset {}: table size {} runs past the buffer", what, pos, table_size));
    return t;
  }

  // Absolute position of field `id` (of `size` bytes), or nullopt when absent.
  std::optional<std::size_t> field(const Table& t, int id, std::size_t size) const {
    const std::size_t slot = 4 + 2 * std::size_t(id);
    if (slot + 2 > t.vtable_size) return std::nullopt;
    const auto off = at<std::uint16_t>(t.vtable + slot);
    if (off == 0) return std::nullopt;
    const std::size_t pos = t.pos + off;
    if (pos > b_.size() || size > b_.size() - pos)
      corrupt(fmt::format("field {} of the table at offset {} lies outside the buffer", id, t.pos));
    return pos;
  }

  template <class T>
  T scalar(const Table& t, int id, T fallback) const {
    const auto p = field(t, id, sizeof(T));
    return p ? at<T>(*p) : fallback;
  }

  // Follows the uoffset stored in field `id`.
  std::optional<std::size_t> offset_target(const Table& t, int id) const {
    const auto p = field(t, id, 4);
    if (!p) return std::nullopt;
    const std::uint64_t target = std::uint64_t(*p) + at<std::uint32_t>(*p);
    if (target >= b_.size())
      corrupt(fmt::format("offset in field {} of the table at {} points to {}, beyond the {}-byte buffer", id, t.pos,
                          target, b_.size()));
    return std::size_t(target);
  }

  std::optional<Table> table(const Table& t, int id, std::string_view what) const {
    const auto p = offset_target(t, id);
    if (!p) return std::nullopt;
    return table_at(*p, what);
  }

  std::optional<Vector> vector(const Table& t, int id, std::size_t elem_size, std::string_view what) const {
    const auto p = offset_target(t, id);
    if (!p) return std::nullopt;
    Vector v;
    v.size = at<std::uint32_t>(*p);
    v.pos = *p + 4;
    if (v.pos > b_.size() || std::uint64_t(v.size) * elem_size > b_.size() - v.pos)
      corrupt(fmt::format("{} vector at offset {} with {} elements of {} bytes runs past the {}-byte buffer", what,
                          *p, v.size, elem_size, b_.size()));
    return v;
  }

  // Element i of a vector of tables.
  Table table_in(const Vector& v, std::uint32_t i, std::string_view what) const {
    const std::size_t slot = v.pos + 4 * std::size_t(i);
    const std::uint64_t target = std::uint64_t(slot) + at<std::uint32_t>(slot);
    if (target >= b_.size()) corrupt(fmt::format("{} {} points beyond the buffer", what, i));
    return table_at(std::size_t(target), what);
  }

  std::optional<std::string_view> string(const Table& t, int id) const {
    const auto v = vector(t, id, 1, "string");
    if (!v) return std::nullopt;
    return std::string_view(reinterpret_cast<const char*>(b_.data() + v->pos), v->size);
  }

 private:
  std::span<const std::byte> b_;
  std::string where_;
};

// Flatbuffer field ids (Schema.fbs, Message.fbs). A union takes two ids: its
// type tag, then its value.
namespace id {
inline constexpr int message_version = 0, message_header_type = 1, message_header = 2, message_body_length = 3;
inline constexpr int schema_endianness = 0, schema_fields = 1;
inline constexpr int field_name = 0, field_type_type = 2, field_type = 3, field_dictionary = 4, field_children = 5;
inline constexpr int int_bit_width = 0, int_is_signed = 1;
inline constexpr int fixed_size_list_size = 0;
inline constexpr int union_mode = 0;
inline constexpr int batch_length = 0, batch_nodes = 1, batch_buffers = 2, batch_compression = 3,
                     batch_variadic_counts = 4;
}  // namespace id

enum MessageType : std::uint8_t { msg_schema = 1, msg_dictionary_batch = 2, msg_record_batch = 3 };
enum TypeTag : std::uint8_t {
  t_null = 1, t_int = 2, t_float = 3, t_binary = 4, t_utf8 = 5, t_bool = 6, t_decimal = 7, t_date = 8, t_time = 9,
  t_timestamp = 10, t_interval = 11, t_list = 12, t_struct = 13, t_union = 14, t_fixed_size_binary = 15,
  t_fixed_size_list = 16, t_map = 17, t_duration = 18, t_large_binary = 19, t_large_utf8 = 20, t_large_list = 21,
  t_run_end_encoded = 22, t_binary_view = 23, t_utf8_view = 24, t_list_view = 25, t_large_list_view = 26
};
inline constexpr std::int16_t metadata_v4 = 3, metadata_v5 = 4;

inline std::string_view type_name(std::uint8_t tag) {
  static constexpr std::string_view names[] = {
      "NONE", "null", "int", "floating point", "binary", "utf8", "bool", "decimal", "date", "time", "timestamp",
      "interval", "list", "struct", "union", "fixed_size_binary", "fixed_size_list", "map", "duration",
      "large_binary", "large_utf8", "large_list", "run_end_encoded", "binary_view", "utf8_view", "list_view",
      "large_list_view"};
  return tag < std::size(names) ? names[tag] : std::string_view("unknown");
}

// How many field nodes and body buffers a field (with its children) takes in a
// record batch, in the pre-order flattening the IPC format uses. Views add
// per-batch variadic buffers, counted separately.
struct Layout {
  std::uint64_t nodes = 0, buffers = 0, views = 0;
};

inline void add_layout(const FlatBuffer& fb, const FlatBuffer::Table& field, std::int16_t version, int depth,
                       std::uint64_t& budget, Layout& out) {
  if (depth > 64) fb.corrupt("fields nested more than 64 deep");
  if (budget-- == 0) fb.corrupt("more than 100000 fields in the schema");
  const auto name = fb.string(field, id::field_name).value_or("");
  out.nodes += 1;
  if (fb.field(field, id::field_dictionary, 4)) {  // dictionary-encoded: the batch holds the indices only
    out.buffers += 2;
    return;
  }
  const auto tag = fb.scalar<std::uint8_t>(field, id::field_type_type, 0);
  switch (tag) {
    case t_null: case t_run_end_encoded: break;
    case t_struct: case t_fixed_size_list: out.buffers += 1; break;
    case t_int: case t_float: case t_bool: case t_decimal: case t_date: case t_time: case t_timestamp:
    case t_interval: case t_fixed_size_binary: case t_duration: case t_list: case t_large_list: case t_map:
      out.buffers += 2;
      break;
    case t_binary: case t_utf8: case t_large_binary: case t_large_utf8: case t_list_view: case t_large_list_view:
      out.buffers += 3;
      break;
    case t_binary_view: case t_utf8_view: out.buffers += 2; out.views += 1; break;
    case t_union: {
      const auto type = fb.table(field, id::field_type, "union type");
      const auto mode = type ? fb.scalar<std::int16_t>(*type, id::union_mode, 0) : std::int16_t(0);
      out.buffers += (mode == 1 ? 2 : 1) + (version < metadata_v5 ? 1 : 0);  // V4 unions had a validity bitmap
      break;
    }
    default:
      fail("{}: field '{}' has Arrow type tag {} ({}), which this reader does not know", fb.where(), name, tag,
           type_name(tag));
  }
  if (const auto children = fb.vector(field, id::field_children, 4, "children"))
    for (std::uint32_t i = 0; i < children->size; ++i)
      add_layout(fb, fb.table_in(*children, i, "child field"), version, depth + 1, budget, out);
}

// Where the token column sits in every record batch of a file.
struct ColumnPlan {
  std::uint64_t node = 0, buffer = 0;        // index of the list's node and first buffer
  std::uint64_t views_before = 0;            // view fields before it (their variadic buffers come first)
  std::uint64_t total_nodes = 0;             // nodes per batch for the whole schema
  std::uint8_t list_tag = t_list;            // list, large_list or fixed_size_list
  std::int32_t list_size = 0;                // fixed_size_list only
  std::uint8_t value_bits = 32;
  bool value_signed = true;
};

// One record batch's token column: rows [first_row, first_row + rows) of the source.
struct Batch {
  std::uint64_t first_row = 0, rows = 0;
  const std::byte* offsets = nullptr;  // rows + 1 offsets (list / large_list); null for fixed_size_list
  const std::byte* values = nullptr;   // child values
  std::uint64_t values_count = 0;      // child length
  std::uint32_t file = 0;
  std::uint8_t list_tag = t_list, value_bits = 32;
  bool value_signed = true;
  std::int32_t list_size = 0;
};

// Reads the schema and finds the token column.
inline ColumnPlan plan_column(const FlatBuffer& fb, const FlatBuffer::Table& schema, std::int16_t version,
                              const std::string& file, const std::string& column) {
  if (fb.scalar<std::int16_t>(schema, id::schema_endianness, 0) != 0)
    fail("{}: the Arrow schema is big-endian; only little-endian data is supported", file);
  const auto fields = fb.vector(schema, id::schema_fields, 4, "schema fields");
  if (!fields || fields->size == 0) fail("{}: the Arrow schema has no fields (expected a '{}' column)", file, column);
  ColumnPlan plan;
  std::uint64_t budget = 100000;
  std::optional<std::uint32_t> found;
  std::string names;
  Layout before, all;
  for (std::uint32_t i = 0; i < fields->size; ++i) {
    const auto f = fb.table_in(*fields, i, "schema field");
    const auto name = fb.string(f, id::field_name).value_or("");
    names += fmt::format("{}'{}'", i ? ", " : "", name);
    if (!found && name == column) {
      found = i;
      before = all;
    }
    add_layout(fb, f, version, 0, budget, all);
  }
  if (!found) fail("{}: no column '{}' in the dataset (columns: {})", file, column, names);
  plan.node = before.nodes;
  plan.buffer = before.buffers;
  plan.views_before = before.views;
  plan.total_nodes = all.nodes;

  const auto f = fb.table_in(*fields, *found, "schema field");
  const auto tag = fb.scalar<std::uint8_t>(f, id::field_type_type, 0);
  auto wrong = [&](std::string_view what) {
    fail("{}: column '{}' has type {}, expected a list of integers (list<int32>, list<int64>, large_list or "
         "fixed_size_list): {}",
         file, column, type_name(tag), what);
  };
  if (fb.field(f, id::field_dictionary, 4)) wrong("it is dictionary-encoded");
  if (tag != t_list && tag != t_large_list && tag != t_fixed_size_list) wrong("not a list");
  plan.list_tag = tag;
  if (tag == t_fixed_size_list) {
    const auto type = fb.table(f, id::field_type, "fixed_size_list type");
    plan.list_size = type ? fb.scalar<std::int32_t>(*type, id::fixed_size_list_size, 0) : 0;
    if (plan.list_size < 0) wrong(fmt::format("negative list size {}", plan.list_size));
  }
  const auto children = fb.vector(f, id::field_children, 4, "children");
  if (!children || children->size != 1) wrong("a list needs exactly one child field");
  const auto child = fb.table_in(*children, 0, "child field");
  const auto child_tag = fb.scalar<std::uint8_t>(child, id::field_type_type, 0);
  if (fb.field(child, id::field_dictionary, 4)) wrong("its values are dictionary-encoded");
  if (child_tag != t_int) wrong(fmt::format("its values are {}, not integers", type_name(child_tag)));
  const auto int_type = fb.table(child, id::field_type, "int type");
  if (!int_type) wrong("its integer type table is missing");
  const auto bits = fb.scalar<std::int32_t>(*int_type, id::int_bit_width, 0);
  if (bits != 8 && bits != 16 && bits != 32 && bits != 64) wrong(fmt::format("integer width {} bits", bits));
  plan.value_bits = std::uint8_t(bits);
  plan.value_signed = fb.scalar<std::uint8_t>(*int_type, id::int_is_signed, 0) != 0;
  return plan;
}

// One record batch's field nodes and body buffers, every access checked
// against the message ("FILE: record batch at byte POS: ..."). `column`
// names the column being read in messages.
struct RecordBatchView {
  const FlatBuffer* fb = nullptr;
  std::string file;
  std::uint64_t pos = 0;
  const std::byte* body = nullptr;
  std::int64_t body_len = 0;
  std::int64_t rows = 0;
  FlatBuffer::Table header;
  std::optional<FlatBuffer::Vector> nodes, bufs;

  // (length, null count) of field node k (k < the node count, checked by the caller's schema check).
  std::pair<std::int64_t, std::int64_t> node(std::uint64_t k) const {
    if (!nodes || k >= nodes->size)
      fail("{}: record batch at byte {} has {} field nodes, node {} is missing", file, pos, nodes ? nodes->size : 0,
           k);
    const std::size_t at = nodes->pos + 16 * std::size_t(k);
    return std::pair{fb->at<std::int64_t>(at), fb->at<std::int64_t>(at + 8)};
  }
  // Body buffer k with its length, checked to lie inside this message's body and to hold min_bytes.
  std::pair<const std::byte*, std::uint64_t> buffer(std::uint64_t k, std::uint64_t min_bytes, std::string_view what,
                                                    std::string_view column) const {
    if (!bufs || k >= bufs->size)
      fail("{}: record batch at byte {} has {} buffers, but column '{}' needs at least {}", file, pos,
           bufs ? bufs->size : 0, column, k + 1);
    const std::size_t at = bufs->pos + 16 * std::size_t(k);
    const auto off = fb->at<std::int64_t>(at), len = fb->at<std::int64_t>(at + 8);
    if (off < 0 || len < 0 || off > body_len || len > body_len - off)
      fail("{}: record batch at byte {}: {} buffer of column '{}' (offset {}, {} bytes) lies outside the "
           "{}-byte body",
           file, pos, what, column, off, len, body_len);
    if (std::uint64_t(len) < min_bytes)
      fail("{}: record batch at byte {}: {} buffer of column '{}' has {} bytes, expected at least {}", file, pos,
           what, column, len, min_bytes);
    return {body + std::uint64_t(off), std::uint64_t(len)};
  }
  // How far the buffers of a field move for the variadic buffers of the `views_before` view fields before it.
  std::uint64_t variadic_shift(std::uint64_t views_before) const {
    std::uint64_t shift = 0;
    if (views_before == 0) return 0;
    const auto counts = fb->vector(header, id::batch_variadic_counts, 8, "variadic buffer counts");
    if (!counts || counts->size < views_before)
      fail("{}: record batch at byte {} lacks variadic buffer counts for its view columns", file, pos);
    for (std::uint32_t k = 0; k < views_before; ++k) {
      const auto c = fb->at<std::int64_t>(counts->pos + 8 * k);
      if (c < 0 || c > (std::int64_t(1) << 32)) fb->corrupt(fmt::format("variadic buffer count {}", c));
      shift += std::uint64_t(c);
    }
    return shift;
  }
};

// Walks one .arrow stream file (the framing described at the top of this
// file, every message checked): on_schema(fb, schema_table, version) for the
// first message, which must be the schema, then on_batch(view) for every
// record batch (its node count not yet checked). Dictionary batches are
// skipped; compressed bodies, a second schema and other message types are
// errors.
// Long on purpose: a loop over the stream's messages, each checked against
// the format with its own message.
template <class OnSchema, class OnBatch>
void walk_stream(const MappedFile& mf, OnSchema&& on_schema, OnBatch&& on_batch) {
  const std::string file = mf.path().string();
  const std::byte* data = mf.data();
  const std::uint64_t size = mf.size();
  if (size == 0) fail("{}: empty file, expected an Arrow IPC stream", file);
  bool have_schema = false;
  std::uint64_t pos = 0;
  for (;;) {
    if (size - pos < 8)
      fail("{}: the Arrow stream ends at byte {} without the end-of-stream marker: the file is truncated", file,
           size);
    const auto marker = load<std::uint32_t>(data + pos);
    if (marker != 0xFFFFFFFFu)
      fail("{}: expected the Arrow IPC continuation marker 0xFFFFFFFF at byte {}, found 0x{:08X} (not an Arrow "
           "stream, or corrupt){}",
           file, pos, marker, pos == 0 && std::memcmp(data, "ARROW1", std::min<std::uint64_t>(6, size)) == 0
                                      ? "; this is the Arrow *file* format, datasets writes the stream format"
                                      : "");
    const auto meta_len = load<std::int32_t>(data + pos + 4);
    if (meta_len == 0) break;  // end of stream
    if (meta_len < 0 || std::uint64_t(meta_len) > size - pos - 8)
      fail("{}: the Arrow message at byte {} declares {} bytes of metadata, beyond the end of the file ({} bytes): "
           "truncated or corrupt",
           file, pos, meta_len, size);
    const std::uint64_t meta_at = pos + 8, body_at = meta_at + std::uint64_t(meta_len);
    FlatBuffer fb(mf.bytes().subspan(meta_at, std::size_t(meta_len)), fmt::format("{}: message at byte {}", file, pos));
    const auto msg = fb.root();
    const auto version = fb.scalar<std::int16_t>(msg, id::message_version, 0);
    if (version < metadata_v4 || version > metadata_v5)
      fail("{}: Arrow message at byte {} has metadata version V{}, expected V4 or V5", file, pos, version + 1);
    const auto type = fb.scalar<std::uint8_t>(msg, id::message_header_type, 0);
    const auto body_len = fb.scalar<std::int64_t>(msg, id::message_body_length, 0);
    if (body_len < 0 || std::uint64_t(body_len) > size - body_at)
      fail("{}: the Arrow message at byte {} has a {}-byte body that runs past the end of the file ({} bytes): "
           "truncated",
           file, pos, body_len, size);
    const auto header = fb.table(msg, id::message_header, "message header");
    if (!header) fail("{}: Arrow message at byte {} has no header", file, pos);

    if (!have_schema) {
      if (type != msg_schema)
        fail("{}: the first Arrow message (byte {}) has type {}, expected the schema", file, pos, type);
      on_schema(fb, *header, version);
      have_schema = true;
    } else if (type == msg_schema) {
      fail("{}: a second schema message at byte {}", file, pos);
    } else if (type == msg_record_batch) {
      const auto& rb = *header;
      const auto rows = fb.scalar<std::int64_t>(rb, id::batch_length, 0);
      if (rows < 0) fail("{}: record batch at byte {} has negative length {}", file, pos, rows);
      if (const auto compression = fb.table(rb, id::batch_compression, "body compression")) {
        const auto codec = fb.scalar<std::int8_t>(*compression, 0, 0);  // CompressionType: LZ4_FRAME, ZSTD
        fail("{}: record batch at byte {} has a body compressed with {}, which is not supported; save the dataset "
             "uncompressed (datasets' default)",
             file, pos, codec == 0 ? "LZ4" : codec == 1 ? "ZSTD" : "an unknown codec");
      }
      RecordBatchView v;
      v.fb = &fb;
      v.file = file;
      v.pos = pos;
      v.body = data + body_at;
      v.body_len = body_len;
      v.rows = rows;
      v.header = rb;
      v.nodes = fb.vector(rb, id::batch_nodes, 16, "field nodes");
      v.bufs = fb.vector(rb, id::batch_buffers, 16, "buffers");
      on_batch(v);
    } else if (type != msg_dictionary_batch) {  // dictionaries belong to other columns: skipped
      fail("{}: Arrow message at byte {} has type {}, expected a record batch (tensors are not supported)", file, pos,
           type);
    }
    pos = body_at + std::uint64_t(body_len);
  }
  if (!have_schema) fail("{}: the Arrow stream ends before its schema", file);
}

// Indexes one .arrow stream file: appends its non-empty record batches.
inline void index_stream(const MappedFile& mf, std::uint32_t file_index, const std::string& column,
                         std::vector<Batch>& batches, std::uint64_t& next_row, std::uint64_t& tokens) {
  const std::string file = mf.path().string();
  std::optional<ColumnPlan> plan;
  walk_stream(
      mf,
      [&](const FlatBuffer& fb, const FlatBuffer::Table& schema, std::int16_t version) {
        plan = plan_column(fb, schema, version, file, column);
      },
      [&](const RecordBatchView& v) {
        const auto& p = *plan;
        const auto pos = v.pos;
        const auto rows = v.rows;
        if (!v.nodes || v.nodes->size != p.total_nodes)
          fail("{}: record batch at byte {} has {} field nodes, but the schema needs {}", file, pos,
               v.nodes ? v.nodes->size : 0, p.total_nodes);
        const std::uint64_t buffer = p.buffer + v.variadic_shift(p.views_before);
        const bool fixed = p.list_tag == t_fixed_size_list;
        const std::uint64_t list_buffers = fixed ? 1 : 2, need = buffer + list_buffers + 2;
        if (!v.bufs || v.bufs->size < need)
          fail("{}: record batch at byte {} has {} buffers, but column '{}' needs at least {}", file, pos,
               v.bufs ? v.bufs->size : 0, column, need);
        const auto [list_len, list_nulls] = v.node(p.node);
        const auto [child_len, child_nulls] = v.node(p.node + 1);
        if (list_len != rows)
          fail("{}: record batch at byte {}: column '{}' has {} rows, the batch {}", file, pos, column, list_len,
               rows);
        if (list_nulls != 0)
          fail("{}: record batch at byte {}: column '{}' has {} null rows (token lists must not be null)", file,
               pos, column, list_nulls);
        if (child_len < 0)
          fail("{}: record batch at byte {}: column '{}' has negative value count {}", file, pos, column,
               child_len);
        if (child_nulls != 0)
          fail("{}: record batch at byte {}: column '{}' has {} null token ids", file, pos, column, child_nulls);
        if (rows == 0) return;
        Batch b;
        b.first_row = next_row;
        b.rows = std::uint64_t(rows);
        b.file = file_index;
        b.list_tag = p.list_tag;
        b.list_size = p.list_size;
        b.value_bits = p.value_bits;
        b.value_signed = p.value_signed;
        b.values_count = std::uint64_t(child_len);
        const std::uint64_t w = p.value_bits / 8;
        if (b.values_count > std::numeric_limits<std::uint64_t>::max() / 8)
          fail("{}: record batch at byte {}: value count {} is impossible", file, pos, child_len);
        std::uint64_t batch_tokens = 0;
        if (fixed) {
          if (std::uint64_t(p.list_size) > b.values_count / b.rows)  // rows * list_size > child length
            fail("{}: record batch at byte {}: column '{}' has {} rows of {} ids but only {} values", file, pos,
                 column, rows, p.list_size, child_len);
          b.values = v.buffer(buffer + 2, b.values_count * w, "values", column).first;
          batch_tokens = b.rows * std::uint64_t(p.list_size);
        } else {
          const std::uint64_t ow = p.list_tag == t_large_list ? 8 : 4;
          if (b.rows > (std::numeric_limits<std::uint64_t>::max() / ow) - 1)
            fail("{}: record batch at byte {}: row count {} is impossible", file, pos, rows);
          b.offsets = v.buffer(buffer + 1, (b.rows + 1) * ow, "offsets", column).first;
          b.values = v.buffer(buffer + 3, b.values_count * w, "values", column).first;
          const auto first = ow == 8 ? load<std::int64_t>(b.offsets) : load<std::int32_t>(b.offsets);
          const auto last = ow == 8 ? load<std::int64_t>(b.offsets + ow * b.rows)
                                    : load<std::int32_t>(b.offsets + ow * b.rows);
          if (first < 0 || last < first || std::uint64_t(last) > b.values_count)
            fail("{}: record batch at byte {}: column '{}' has list offsets from {} to {}, expected 0 <= first <= "
                 "last <= {} (the value count)",
                 file, pos, column, first, last, child_len);
          batch_tokens = std::uint64_t(last - first);
        }
        batches.push_back(b);
        next_row += b.rows;
        tokens += batch_tokens;
      });
}

}  // namespace detail::arrow

// One domain's token data from `datasets` folders (see the top of this file).
class ArrowSource {
 public:
  // `folder` is one dataset (it has state.json) or a folder of shard datasets
  // (sub-folders that each have state.json, taken in sorted name order).
  explicit ArrowSource(const std::filesystem::path& folder, ArrowOptions options = {})
      : name_(folder.string()), options_(std::move(options)) {
    open(data_files(folder));
  }

  // Explicit .arrow stream files, in order; `name` is used in describe().
  static ArrowSource from_files(const std::vector<std::filesystem::path>& files, std::string name,
                                ArrowOptions options = {}) {
    ArrowSource s(Unopened{}, std::move(name), std::move(options));
    s.open(files);
    return s;
  }

  // The .arrow files of a dataset folder, as its state.json lists them (or
  // of each shard dataset in a folder of shards).
  static std::vector<std::filesystem::path> data_files(const std::filesystem::path& folder) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) fail("datasets folder {} does not exist or is not a directory", folder.string());
    if (fs::exists(folder / "state.json", ec)) return dataset_files(folder);
    if (fs::exists(folder / "dataset_info.json", ec))
      fail("{}: missing state.json (the folder has dataset_info.json, so it should be one dataset written by "
           "save_to_disk)",
           (folder / "state.json").string());
    if (fs::exists(folder / "dataset_dict.json", ec))
      fail("{} is a DatasetDict (dataset_dict.json): open one of its split folders instead", folder.string());
    std::vector<fs::path> shards;
    for (const auto& e : fs::directory_iterator(folder, ec)) {
      const auto name = e.path().filename().string();
      if (!name.empty() && name[0] != '.' && e.is_directory()) shards.push_back(e.path());
    }
    if (ec) fail("cannot list {}: {}", folder.string(), ec.message());
    if (shards.empty())
      fail("{}: missing state.json: the folder is neither a dataset written by save_to_disk nor a folder of them",
           (folder / "state.json").string());
    std::sort(shards.begin(), shards.end());
    std::vector<fs::path> files;
    for (const auto& s : shards) {
      if (!fs::exists(s / "state.json", ec))
        fail("{}: missing state.json (shard dataset {} of {})", (s / "state.json").string(), s.filename().string(),
             folder.string());
      for (auto& f : dataset_files(s)) files.push_back(std::move(f));
    }
    return files;
  }

  std::size_t size() const { return std::size_t(rows_); }
  std::size_t length(std::size_t i) const {
    const auto& b = batch(i);
    return std::size_t(row_range(b, i).second);
  }
  void read(std::size_t i, std::size_t offset, std::span<std::int32_t> out) const {
    const auto& b = batch(i);
    const auto [begin, n] = row_range(b, i);
    if (offset > n || out.size() > n - offset)
      fail("{}: read of tokens [{}, {}) of sequence {} beyond its length {}", describe(), offset, offset + out.size(),
           i, n);
    const std::uint64_t w = b.value_bits / 8;
    const std::byte* src = b.values + (begin + offset) * w;
    const auto& file = files_[b.file].path();
    auto put = [&](std::size_t j, auto v) {
      if (!std::in_range<std::int32_t>(v))
        fail("{}: token id {} at position {} of sequence {} does not fit int32", file.string(), v, offset + j, i);
      out[j] = std::int32_t(v);
    };
    using detail::arrow::load;
    const std::size_t m = out.size();
    switch (b.value_bits * (b.value_signed ? 1 : -1)) {
      case 32:
        if (m) std::memcpy(out.data(), src, 4 * m);
        break;
      case 64: for (std::size_t j = 0; j < m; ++j) put(j, load<std::int64_t>(src + 8 * j)); break;
      case -64: for (std::size_t j = 0; j < m; ++j) put(j, load<std::uint64_t>(src + 8 * j)); break;
      case -32: for (std::size_t j = 0; j < m; ++j) put(j, load<std::uint32_t>(src + 4 * j)); break;
      case 16: for (std::size_t j = 0; j < m; ++j) out[j] = load<std::int16_t>(src + 2 * j); break;
      case -16: for (std::size_t j = 0; j < m; ++j) out[j] = load<std::uint16_t>(src + 2 * j); break;
      case 8: for (std::size_t j = 0; j < m; ++j) out[j] = load<std::int8_t>(src + j); break;
      case -8: for (std::size_t j = 0; j < m; ++j) out[j] = load<std::uint8_t>(src + j); break;
      default: fail("{}: internal error: integer width {}", file.string(), b.value_bits);
    }
    check_token_range(out.first(m), options_.vocab_size, file.string(), i, offset);
  }
  std::uint64_t total_tokens() const { return tokens_; }
  std::string describe() const { return fmt::format("datasets folder {}", name_); }

  // The .arrow files, in the order their rows are numbered.
  std::vector<std::filesystem::path> files() const {
    std::vector<std::filesystem::path> out;
    for (const auto& f : files_) out.push_back(f.path());
    return out;
  }
  std::size_t record_batches() const { return batches_.size(); }

 private:
  struct Unopened {};
  ArrowSource(Unopened, std::string name, ArrowOptions options) : name_(std::move(name)), options_(std::move(options)) {}

  static std::vector<std::filesystem::path> dataset_files(const std::filesystem::path& dir) {
    namespace fs = std::filesystem;
    const auto state_path = dir / "state.json";
    const auto state = read_json_file(state_path);
    const std::string where = state_path.string();
    if (!state.is_object() || !state.contains("_data_files") || !state["_data_files"].is_array())
      fail("{}: expected an object with a '_data_files' list (a datasets save_to_disk state file)", where);
    std::vector<fs::path> files;
    for (const auto& entry : state["_data_files"]) {
      if (!entry.is_object() || !entry.contains("filename") || !entry["filename"].is_string())
        fail("{}: every '_data_files' entry needs a 'filename' string, found {}", where, entry.dump());
      const fs::path name = entry["filename"].get<std::string>();
      if (name.empty() || name.is_absolute() || name.filename() != name)
        fail("{}: data file name '{}' must be a plain file name in {}", where, name.string(), dir.string());
      const auto path = dir / name;
      std::error_code ec;
      if (!fs::is_regular_file(path, ec))
        fail("{}: data file {} listed in '_data_files' does not exist", where, path.string());
      files.push_back(path);
    }
    if (files.empty()) fail("{}: '_data_files' is empty", where);
    return files;
  }

  void open(const std::vector<std::filesystem::path>& paths) {
    if (paths.empty()) fail("{}: no .arrow files", describe());
    files_.reserve(paths.size());
    for (const auto& p : paths) {
      files_.emplace_back(p, "Arrow data file");
      detail::arrow::index_stream(files_.back(), std::uint32_t(files_.size() - 1), options_.column, batches_, rows_,
                                  tokens_);
    }
    batches_.shrink_to_fit();
  }

  const detail::arrow::Batch& batch(std::size_t i) const {
    if (i >= rows_) fail("{}: sequence {} out of range (size {})", describe(), i, rows_);
    const auto it = std::upper_bound(batches_.begin(), batches_.end(), std::uint64_t(i),
                                     [](std::uint64_t r, const detail::arrow::Batch& b) { return r < b.first_row; });
    return *(it - 1);
  }

  // (first value index, token count) of source row i, with its offsets checked.
  std::pair<std::uint64_t, std::uint64_t> row_range(const detail::arrow::Batch& b, std::size_t i) const {
    using detail::arrow::load;
    const std::uint64_t r = i - b.first_row;
    if (b.list_tag == detail::arrow::t_fixed_size_list)
      return {r * std::uint64_t(b.list_size), std::uint64_t(b.list_size)};
    std::int64_t lo, hi;
    if (b.list_tag == detail::arrow::t_large_list) {
      lo = load<std::int64_t>(b.offsets + 8 * r);
      hi = load<std::int64_t>(b.offsets + 8 * (r + 1));
    } else {
      lo = load<std::int32_t>(b.offsets + 4 * r);
      hi = load<std::int32_t>(b.offsets + 4 * (r + 1));
    }
    if (lo < 0 || hi < lo || std::uint64_t(hi) > b.values_count)
      fail("{}: corrupt list offsets [{}, {}) for row {} of column '{}' (sequence {}; {} values in its record batch)",
           files_[b.file].path().string(), lo, hi, r, options_.column, i, b.values_count);
    return {std::uint64_t(lo), std::uint64_t(hi - lo)};
  }

  std::string name_;
  ArrowOptions options_;
  std::vector<MappedFile> files_;
  std::vector<detail::arrow::Batch> batches_;
  std::uint64_t rows_ = 0, tokens_ = 0;
};

static_assert(TokenSource<ArrowSource>);

// A split of a DoReMi-style data root: <root>/<split>/<domain>/ is one
// domain's datasets folder (as the public DoReMi preprocessing writes train/
// and validation/). Domains are sorted by name, which fixes the domain order.
struct ArrowSplit {
  std::vector<std::string> domains;
  std::vector<ArrowSource> sources;
};

// Opens every domain folder of <root>/<split>, or only `domains` when given
// (each must exist).
inline ArrowSplit open_arrow_split(const std::filesystem::path& root, std::string_view split,
                                   std::vector<std::string> domains = {}, const ArrowOptions& options = {}) {
  namespace fs = std::filesystem;
  const fs::path dir = root / fs::path(std::string(split));
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    fail("split folder {} does not exist (expected <root>/<split>/<domain>/ datasets folders)", dir.string());
  if (domains.empty()) {
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const auto name = e.path().filename().string();
      if (!name.empty() && name[0] != '.' && e.is_directory()) domains.push_back(name);
    }
    if (ec) fail("cannot list {}: {}", dir.string(), ec.message());
    if (domains.empty()) fail("split folder {} has no domain folders", dir.string());
  }
  std::sort(domains.begin(), domains.end());
  domains.erase(std::unique(domains.begin(), domains.end()), domains.end());
  ArrowSplit out;
  out.sources.reserve(domains.size());
  for (const auto& d : domains) {
    if (d.empty() || fs::path(d).filename() != fs::path(d))
      fail("domain name '{}' is not a plain folder name (in split folder {})", d, dir.string());
    if (!fs::is_directory(dir / d, ec))
      fail("domain '{}': folder {} does not exist in split '{}'", d, (dir / d).string(), split);
    out.sources.emplace_back(dir / d, options);
  }
  out.domains = std::move(domains);
  return out;
}

}  // namespace doremi
