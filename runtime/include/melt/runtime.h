/*===- melt/runtime.h - the melt runtime C API -------------------*- C -*-===*
 *
 * The C API of the melt runtime. Every fallible call returns a melt_status;
 * no C++ exception ever crosses this boundary.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MELT_RUNTIME_H
#define MELT_RUNTIME_H

#include "melt/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Status codes of the C API. */
typedef enum melt_status {
  MELT_OK = 0,
  MELT_INVALID_ARGUMENT = 1,
  MELT_NOT_FOUND = 2,
  MELT_OUT_OF_MEMORY = 3,
  MELT_RESOURCE_EXHAUSTED = 4,
  MELT_UNSUPPORTED = 5,
  MELT_INVALID_ARTIFACT = 6,
  MELT_DEVICE_ERROR = 7,
  MELT_INTERNAL = 8,
} melt_status;

/* A short English name of a status code ("ok", "invalid argument", ...);
 * never NULL, also for codes this runtime does not know. */
const char *melt_status_name(melt_status status);

/* The runtime's version, e.g. "0.1.0". */
const char *melt_runtime_version(void);

/* Whether an artifact of format version major.minor can be loaded. */
int melt_artifact_version_supported(unsigned major, unsigned minor);

#ifdef __cplusplus
}
#endif

#endif /* MELT_RUNTIME_H */
