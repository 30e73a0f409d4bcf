//===- Safetensors.cpp - safetensors headers --------------------*- C++ -*-===//
#include "frontends/hf/Safetensors.h"

#include "frontends/hf/StrictJson.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringSwitch.h"
#include "llvm/Support/Endian.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"

#include <algorithm>

using namespace mlir::melt;
using llvm::json::Value;

unsigned mlir::melt::safetensorsDTypeBits(llvm::StringRef dtype) {
  return llvm::StringSwitch<unsigned>(dtype)
      .Cases("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", 8)
      .Cases("I16", "U16", "F16", "BF16", 16)
      .Cases("I32", "U32", "F32", 32)
      .Cases("I64", "U64", "F64", "C64", 64)
      .Case("F4", 4)
      .Cases("F6_E2M3", "F6_E3M2", 6)
      .Default(0);
}

uint64_t SafetensorsTensor::numElements() const {
  uint64_t n = 1;
  for (int64_t d : shape)
    n *= static_cast<uint64_t>(d);
  return n;
}

namespace {

std::string shapeString(const std::vector<int64_t> &shape) {
  std::string s = "[";
  for (auto [i, d] : llvm::enumerate(shape))
    s += (i ? ", " : "") + std::to_string(d);
  return s + "]";
}

/// Parses one tensor entry; errors name the file and the tensor.
llvm::Error parseTensor(llvm::StringRef path, llvm::StringRef name,
                        const Value &value, SafetensorsTensor &tensor) {
  auto fail = [&](const llvm::Twine &message) {
    return fileError(path, "tensor '" + name + "': " + message);
  };
  const llvm::json::Object *entry = value.getAsObject();
  if (!entry)
    return fail("must be an object with dtype, shape and data_offsets");
  for (const auto &field : *entry)
    if (field.first != "dtype" && field.first != "shape" &&
        field.first != "data_offsets")
      return fail("unknown field '" + field.first.str() + "'");

  tensor.name = name.str();
  std::optional<llvm::StringRef> dtype = entry->getString("dtype");
  if (!dtype)
    return fail("'dtype' must be a string");
  if (safetensorsDTypeBits(*dtype) == 0)
    return fail("unknown dtype \"" + *dtype + "\"");
  tensor.dtype = dtype->str();

  const llvm::json::Array *shape = entry->getArray("shape");
  if (!shape)
    return fail("'shape' must be an array of non-negative integers");
  for (const Value &d : *shape) {
    std::optional<int64_t> size = d.getAsInteger();
    if (!size || *size < 0)
      return fail("'shape' must be an array of non-negative integers");
    tensor.shape.push_back(*size);
  }

  const llvm::json::Array *offsets = entry->getArray("data_offsets");
  std::optional<uint64_t> begin, end;
  if (offsets && offsets->size() == 2) {
    begin = (*offsets)[0].getAsUINT64();
    end = (*offsets)[1].getAsUINT64();
  }
  if (!begin || !end)
    return fail("'data_offsets' must be [begin, end], two non-negative "
                "integers");
  if (*begin > *end)
    return fail(llvm::formatv("data_offsets [{0}, {1}] end before they begin",
                              *begin, *end));
  tensor.begin = *begin;
  tensor.end = *end;

  // shape x dtype size must be the byte range, without overflow.
  uint64_t elements = 1;
  for (int64_t d : tensor.shape)
    if (__builtin_mul_overflow(elements, static_cast<uint64_t>(d), &elements))
      return fail("shape " + shapeString(tensor.shape) +
                  " has more elements than 64 bits can count");
  uint64_t bits = 0;
  if (__builtin_mul_overflow(elements, safetensorsDTypeBits(*dtype), &bits))
    return fail("shape " + shapeString(tensor.shape) + " of " + *dtype +
                " is larger than 64 bits can count");
  if (bits % 8 != 0)
    return fail(llvm::formatv("{0} elements of {1} do not fill whole bytes",
                              elements, *dtype));
  if (bits / 8 != *end - *begin)
    return fail(llvm::formatv("shape {0} of {1} needs {2} bytes, but "
                              "data_offsets [{3}, {4}] hold {5}",
                              shapeString(tensor.shape), *dtype, bits / 8,
                              *begin, *end, *end - *begin));
  return llvm::Error::success();
}

} // namespace

llvm::Expected<SafetensorsHeader>
mlir::melt::readSafetensorsHeader(llvm::StringRef path) {
  SafetensorsHeader header;
  header.path = path.str();
  if (std::error_code ec = llvm::sys::fs::file_size(path, header.fileSize))
    return fileError(path, "cannot read: " + ec.message());
  if (header.fileSize < 8)
    return fileError(path, llvm::formatv("is {0} bytes, too short for the "
                                         "8-byte header length",
                                         header.fileSize));
  auto prefix = llvm::MemoryBuffer::getFileSlice(path, 8, 0);
  if (!prefix)
    return fileError(path, "cannot read: " + prefix.getError().message());
  header.headerSize = llvm::support::endian::read64le(
      (*prefix)->getBufferStart());
  if (header.headerSize > kMaxSafetensorsHeaderBytes)
    return fileError(path, llvm::formatv("header length {0} exceeds the "
                                         "100 MB limit",
                                         header.headerSize));
  if (header.headerSize > header.fileSize - 8)
    return fileError(path, llvm::formatv("header length {0} runs past the "
                                         "end of the {1}-byte file",
                                         header.headerSize, header.fileSize));
  if (header.headerSize < 2)
    return fileError(path, "header is empty");
  auto text = llvm::MemoryBuffer::getFileSlice(path, header.headerSize, 8);
  if (!text)
    return fileError(path, "cannot read: " + text.getError().message());
  llvm::StringRef json = (*text)->getBuffer();
  if (json.front() != '{')
    return fileError(path, "header must be a JSON object");
  llvm::Expected<Value> value = parseStrictJson(json, path);
  if (!value)
    return value.takeError();
  const llvm::json::Object *object = value->getAsObject();
  if (!object)
    return fileError(path, "header must be a JSON object");

  for (const auto &entry : *object) {
    llvm::StringRef name = entry.first;
    if (name == "__metadata__") {
      const llvm::json::Object *metadata = entry.second.getAsObject();
      if (!metadata)
        return fileError(path, "'__metadata__' must be an object of strings");
      for (const auto &item : *metadata) {
        std::optional<llvm::StringRef> s = item.second.getAsString();
        if (!s)
          return fileError(path, "'__metadata__." + item.first.str() +
                                     "' must be a string");
        header.metadata[item.first.str()] = s->str();
      }
      continue;
    }
    SafetensorsTensor tensor;
    if (llvm::Error error = parseTensor(path, name, entry.second, tensor))
      return std::move(error);
    header.tensors.push_back(std::move(tensor));
  }
  // json::Object is unordered: keep a stable, meaningful order.
  llvm::sort(header.tensors, [](const auto &a, const auto &b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });

  // Offsets: contiguous from 0, no gap, no overlap, covering the data area.
  uint64_t dataBytes = header.fileSize - header.dataOffset();
  uint64_t cursor = 0;
  const SafetensorsTensor *previous = nullptr;
  for (const SafetensorsTensor &t : header.tensors) {
    if (t.begin != cursor) {
      if (!previous)
        return fileError(path, llvm::formatv("tensor '{0}': the first tensor "
                                             "starts at byte {1}, not 0",
                                             t.name, t.begin));
      return fileError(
          path, llvm::formatv("tensor '{0}': data_offsets [{1}, {2}] {3} "
                              "tensor '{4}', which ends at byte {5}",
                              t.name, t.begin, t.end,
                              t.begin < cursor ? "overlap" : "leave a gap after",
                              previous->name, cursor));
    }
    cursor = t.end;
    previous = &t;
  }
  if (cursor > dataBytes)
    return fileError(path, llvm::formatv("tensor '{0}': data_offsets end at "
                                         "byte {1}, past the {2}-byte data "
                                         "area (file truncated?)",
                                         previous->name, cursor, dataBytes));
  if (cursor < dataBytes)
    return fileError(path, llvm::formatv("{0} trailing bytes after the last "
                                         "tensor (the data area holds {1} "
                                         "bytes, tensors cover {2})",
                                         dataBytes - cursor, dataBytes,
                                         cursor));
  return header;
}

std::string mlir::melt::serializeSafetensorsHeader(
    const std::vector<SafetensorsTensor> &tensors,
    const std::map<std::string, std::string> &metadata) {
  std::string json;
  llvm::raw_string_ostream os(json);
  llvm::json::OStream out(os);
  out.object([&] {
    if (!metadata.empty())
      out.attributeObject("__metadata__", [&] {
        for (const auto &[key, value] : metadata)
          out.attribute(key, value);
      });
    for (const SafetensorsTensor &t : tensors)
      out.attributeObject(t.name, [&] {
        out.attribute("dtype", t.dtype);
        out.attributeArray("shape", [&] {
          for (int64_t d : t.shape)
            out.value(d);
        });
        out.attributeArray("data_offsets", [&] {
          out.value(t.begin);
          out.value(t.end);
        });
      });
  });
  os.flush();
  while (json.size() % 8 != 0)
    json.push_back(' ');
  std::string result(8, '\0');
  llvm::support::endian::write64le(result.data(), json.size());
  return result + json;
}
