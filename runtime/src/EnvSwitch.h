//===- EnvSwitch.h - switches and numbers from the environment --*- C++ -*-===//
//
// The runtime's measuring and comparing switches (the README's table of
// environment variables): read the same way by the executor and the
// devices.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_RUNTIME_ENVSWITCH_H
#define MELT_RUNTIME_ENVSWITCH_H

#include <cstdlib>
#include <string>

namespace melt::rt {

/// A switch from the environment: =1 on, =0 off; unset (or anything else),
/// the default.
inline bool envSwitch(const char *name, bool byDefault) {
  const char *v = std::getenv(name);
  if (!v)
    return byDefault;
  return byDefault ? std::string(v) != "0" : std::string(v) == "1";
}

/// A whole number from the environment in [lowest, highest]; unset, not a
/// number or out of that range: the default.
inline long long envInt(const char *name, long long byDefault, long long lowest,
                        long long highest) {
  const char *v = std::getenv(name);
  if (!v || !*v)
    return byDefault;
  char *end = nullptr;
  long long n = std::strtoll(v, &end, 10);
  return *end == '\0' && n >= lowest && n <= highest ? n : byDefault;
}

} // namespace melt::rt

#endif // MELT_RUNTIME_ENVSWITCH_H
