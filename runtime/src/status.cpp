//===- status.cpp - status codes of the C API -------------------*- C++ -*-===//
#include "melt/runtime.h"

extern "C" const char *melt_status_name(int status) {
  // An int, not the enum: callers may pass any code, and loading an
  // out-of-range enum value is undefined behaviour.
  switch (status) {
  case MELT_OK:
    return "ok";
  case MELT_INVALID_ARGUMENT:
    return "invalid argument";
  case MELT_NOT_FOUND:
    return "not found";
  case MELT_OUT_OF_MEMORY:
    return "out of memory";
  case MELT_RESOURCE_EXHAUSTED:
    return "resource exhausted";
  case MELT_UNSUPPORTED:
    return "unsupported";
  case MELT_INVALID_ARTIFACT:
    return "invalid artifact";
  case MELT_DEVICE_ERROR:
    return "device error";
  case MELT_INTERNAL:
    return "internal error";
  }
  return "unknown status";
}
