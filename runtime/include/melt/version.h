/*===- melt/version.h - versions of the runtime and its artifacts -*- C -*-===*
 *
 * One place for every version number: the runtime library's, and the
 * artifact format's. An artifact loads when its major version equals
 * MELT_ARTIFACT_VERSION_MAJOR and its minor version is at most
 * MELT_ARTIFACT_VERSION_MINOR.
 *
 *===----------------------------------------------------------------------===*/
#ifndef MELT_VERSION_H
#define MELT_VERSION_H

#define MELT_VERSION_MAJOR 0
#define MELT_VERSION_MINOR 1
#define MELT_VERSION_PATCH 0
#define MELT_VERSION_STRING "0.1.0"

#define MELT_ARTIFACT_VERSION_MAJOR 0
#define MELT_ARTIFACT_VERSION_MINOR 3

#endif /* MELT_VERSION_H */
