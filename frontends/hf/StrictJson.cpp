//===- StrictJson.cpp - JSON parsing with located errors --------*- C++ -*-===//
#include "frontends/hf/StrictJson.h"

#include "llvm/ADT/STLExtras.h"
#include "llvm/ADT/StringExtras.h"
#include "llvm/ADT/StringSet.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/MemoryBuffer.h"
#include "llvm/Support/Regex.h"

#include <cmath>
#include <vector>

using namespace mlir::melt;
using llvm::json::Value;

llvm::Error mlir::melt::fileError(llvm::StringRef file,
                                  const llvm::Twine &message) {
  return llvm::createStringError(llvm::inconvertibleErrorCode(),
                                 (file + ": " + message).str());
}

namespace {

/// Line and column (1-based) of byte `offset` in `text`.
std::pair<unsigned, unsigned> lineColumn(llvm::StringRef text, size_t offset) {
  unsigned line = 1, column = 1;
  for (size_t i = 0; i < offset && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

/// Finds the first duplicate key of any object in `text`, which must be
/// valid JSON. Keys are compared as written (escapes not decoded).
std::optional<std::pair<std::string, size_t>>
findDuplicateKey(llvm::StringRef text) {
  // One key set per open container; arrays get an unused set.
  std::vector<llvm::StringSet<>> keys;
  std::vector<bool> isObject;
  bool expectKey = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    switch (c) {
    case '{':
      keys.emplace_back();
      isObject.push_back(true);
      expectKey = true;
      break;
    case '[':
      keys.emplace_back();
      isObject.push_back(false);
      expectKey = false;
      break;
    case '}':
    case ']':
      keys.pop_back();
      isObject.pop_back();
      expectKey = false;
      break;
    case ',':
      expectKey = !isObject.empty() && isObject.back();
      break;
    case '"': {
      size_t start = i++;
      while (i < text.size() && text[i] != '"')
        i += text[i] == '\\' ? 2 : 1;
      if (expectKey) {
        llvm::StringRef key = text.slice(start + 1, i);
        if (!keys.back().insert(key).second)
          return std::make_pair(key.str(), start);
        expectKey = false;
      }
      break;
    }
    default:
      break;
    }
  }
  return std::nullopt;
}

} // namespace

llvm::Expected<Value> mlir::melt::parseStrictJson(llvm::StringRef text,
                                                  llvm::StringRef file) {
  size_t badOffset = 0;
  if (!llvm::json::isUTF8(text, &badOffset)) {
    auto [line, column] = lineColumn(text, badOffset);
    return fileError(file, llvm::formatv("{0}:{1}: invalid UTF-8", line,
                                         column));
  }
  llvm::Expected<Value> value = llvm::json::parse(text);
  if (!value) {
    // llvm::json says "[line:col, byte=N]: message"; say "line:col: message".
    std::string message = llvm::toString(value.takeError());
    llvm::SmallVector<llvm::StringRef> groups;
    llvm::Regex located("^\\[([0-9]+):([0-9]+), byte=[0-9]+\\]: (.*)$");
    if (located.match(message, &groups))
      return fileError(file, llvm::formatv("{0}:{1}: invalid JSON: {2}",
                                           groups[1], groups[2], groups[3]));
    return fileError(file, "invalid JSON: " + message);
  }
  if (auto duplicate = findDuplicateKey(text)) {
    auto [line, column] = lineColumn(text, duplicate->second);
    return fileError(file, llvm::formatv("{0}:{1}: duplicate key \"{2}\"",
                                         line, column, duplicate->first));
  }
  return value;
}

llvm::Expected<Value> mlir::melt::readStrictJsonFile(llvm::StringRef path,
                                                     uint64_t maxBytes) {
  uint64_t size = 0;
  if (std::error_code ec = llvm::sys::fs::file_size(path, size))
    return fileError(path, "cannot read: " + ec.message());
  if (size > maxBytes)
    return fileError(path, llvm::formatv("is {0} bytes, more than the {1} "
                                         "bytes a JSON file may have here",
                                         size, maxBytes));
  auto buffer = llvm::MemoryBuffer::getFile(path, /*IsText=*/false,
                                            /*RequiresNullTerminator=*/false);
  if (!buffer)
    return fileError(path, "cannot read: " + buffer.getError().message());
  return parseStrictJson((*buffer)->getBuffer(), path);
}

//===----------------------------------------------------------------------===//
// JsonFields
//===----------------------------------------------------------------------===//

const Value *JsonFields::find(llvm::StringRef field) const {
  return object.get(field);
}

bool JsonFields::has(llvm::StringRef field) const {
  return find(field) != nullptr;
}

bool JsonFields::isNull(llvm::StringRef field) const {
  const Value *v = find(field);
  return !v || v->kind() == Value::Null;
}

void JsonFields::problem(llvm::StringRef field, const llvm::Twine &message) {
  problems.push_back(
      (file + ": '" + prefix + field + "': " + message).str());
}

llvm::Error JsonFields::takeError() {
  if (problems.empty())
    return llvm::Error::success();
  std::string all = llvm::join(problems, "\n");
  problems.clear();
  return llvm::createStringError(llvm::inconvertibleErrorCode(), all);
}

/// What a JSON value is, for messages.
static const char *kindName(const Value &v) {
  switch (v.kind()) {
  case Value::Null:
    return "null";
  case Value::Boolean:
    return "a boolean";
  case Value::Number:
    return "a number";
  case Value::String:
    return "a string";
  case Value::Array:
    return "an array";
  case Value::Object:
    return "an object";
  }
  return "a value";
}

int64_t JsonFields::integer(llvm::StringRef field) {
  const Value *v = find(field);
  if (!v) {
    problem(field, "required field is missing");
    return 0;
  }
  if (std::optional<int64_t> i = v->getAsInteger())
    return *i;
  problem(field, llvm::Twine("must be an integer, got ") + kindName(*v));
  return 0;
}

int64_t JsonFields::integer(llvm::StringRef field, int64_t fallback) {
  return isNull(field) ? fallback : integer(field);
}

std::optional<int64_t> JsonFields::nullableInteger(llvm::StringRef field) {
  if (isNull(field))
    return std::nullopt;
  return integer(field);
}

double JsonFields::number(llvm::StringRef field) {
  const Value *v = find(field);
  if (!v) {
    problem(field, "required field is missing");
    return 0;
  }
  std::optional<double> d = v->getAsNumber();
  if (!d) {
    problem(field, llvm::Twine("must be a number, got ") + kindName(*v));
    return 0;
  }
  if (!std::isfinite(*d)) {
    problem(field, "must be finite");
    return 0;
  }
  return *d;
}

double JsonFields::number(llvm::StringRef field, double fallback) {
  return isNull(field) ? fallback : number(field);
}

std::string JsonFields::string(llvm::StringRef field) {
  const Value *v = find(field);
  if (!v) {
    problem(field, "required field is missing");
    return "";
  }
  if (std::optional<llvm::StringRef> s = v->getAsString())
    return s->str();
  problem(field, llvm::Twine("must be a string, got ") + kindName(*v));
  return "";
}

std::string JsonFields::string(llvm::StringRef field,
                               llvm::StringRef fallback) {
  return isNull(field) ? fallback.str() : string(field);
}

bool JsonFields::boolean(llvm::StringRef field) {
  const Value *v = find(field);
  if (!v) {
    problem(field, "required field is missing");
    return false;
  }
  if (std::optional<bool> b = v->getAsBoolean())
    return *b;
  problem(field, llvm::Twine("must be true or false, got ") + kindName(*v));
  return false;
}

bool JsonFields::boolean(llvm::StringRef field, bool fallback) {
  return isNull(field) ? fallback : boolean(field);
}
