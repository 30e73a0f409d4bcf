//===- Status.h - errors inside the runtime ---------------------*- C++ -*-===//
#ifndef MELT_RUNTIME_STATUS_H
#define MELT_RUNTIME_STATUS_H

#include "melt/runtime.h"

#include <string>
#include <utility>

namespace melt::rt {

/// A status code with a message that names the file, field or index at
/// fault. Nothing in the runtime throws across the C API; internal code
/// returns Status.
class Status {
public:
  Status() = default;
  Status(melt_status code, std::string message)
      : code_(code), message_(std::move(message)) {}
  static Status ok() { return {}; }

  bool isOk() const { return code_ == MELT_OK; }
  explicit operator bool() const { return !isOk(); } // true on error
  melt_status code() const { return code_; }
  const std::string &message() const { return message_; }

private:
  melt_status code_ = MELT_OK;
  std::string message_;
};

inline Status invalidArtifact(std::string message) {
  return {MELT_INVALID_ARTIFACT, std::move(message)};
}
inline Status invalidArgument(std::string message) {
  return {MELT_INVALID_ARGUMENT, std::move(message)};
}

#define MELT_RETURN_IF_ERROR(expr)                                             \
  do {                                                                         \
    ::melt::rt::Status _status = (expr);                                         \
    if (_status)                                                               \
      return _status;                                                          \
  } while (false)

} // namespace melt::rt

#endif // MELT_RUNTIME_STATUS_H
