//===- StrictJson.h - JSON parsing with located errors ----------*- C++ -*-===//
//
// llvm::json with what checkpoint files need on top: errors as
// "file:line:col: message", rejection of duplicate object keys (llvm::json
// keeps the last one silently), and typed field readers whose errors name
// the file and the field.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_STRICTJSON_H
#define MELT_FRONTENDS_HF_STRICTJSON_H

#include "llvm/ADT/StringRef.h"
#include "llvm/Support/Error.h"
#include "llvm/Support/JSON.h"

#include <optional>
#include <string>

namespace mlir::melt {

/// An error "<file>: <message>".
llvm::Error fileError(llvm::StringRef file, const llvm::Twine &message);

/// Parses `text` (the contents of `file`): valid UTF-8, valid JSON, no
/// duplicate key in any object.
llvm::Expected<llvm::json::Value> parseStrictJson(llvm::StringRef text,
                                                  llvm::StringRef file);

/// Reads and parses a JSON file; `maxBytes` bounds what is read.
llvm::Expected<llvm::json::Value> readStrictJsonFile(llvm::StringRef path,
                                                     uint64_t maxBytes);

/// Typed access to the fields of one JSON object, collecting every problem
/// as "<file>: '<prefix><field>': <what>".
class JsonFields {
public:
  JsonFields(const llvm::json::Object &object, llvm::StringRef file,
             llvm::StringRef prefix = "")
      : object(object), file(file.str()), prefix(prefix.str()) {}

  bool has(llvm::StringRef field) const;
  /// Absent or null.
  bool isNull(llvm::StringRef field) const;

  /// Required fields: a problem is recorded when absent or mistyped.
  int64_t integer(llvm::StringRef field);
  double number(llvm::StringRef field);
  std::string string(llvm::StringRef field);
  bool boolean(llvm::StringRef field);

  /// Optional fields: `fallback` when absent (or null), a problem when
  /// mistyped.
  int64_t integer(llvm::StringRef field, int64_t fallback);
  double number(llvm::StringRef field, double fallback);
  std::string string(llvm::StringRef field, llvm::StringRef fallback);
  bool boolean(llvm::StringRef field, bool fallback);
  /// An integer, or nullopt when absent or null.
  std::optional<int64_t> nullableInteger(llvm::StringRef field);

  void problem(llvm::StringRef field, const llvm::Twine &message);
  bool ok() const { return problems.empty(); }
  /// All problems as one error, one per line.
  llvm::Error takeError();
  /// Takes over the problems of `nested` (the fields of a nested object).
  void absorb(JsonFields &nested) {
    problems.insert(problems.end(), nested.problems.begin(),
                    nested.problems.end());
    nested.problems.clear();
  }

private:
  const llvm::json::Value *find(llvm::StringRef field) const;

  const llvm::json::Object &object;
  std::string file, prefix;
  std::vector<std::string> problems;
};

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_STRICTJSON_H
