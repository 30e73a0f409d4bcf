//===- HFConfig.h - config.json <-> ModelConfig -----------------*- C++ -*-===//
//
// Reads the config.json of a DeepSeek-V2/V3 checkpoint, in the original
// style (rope_theta + rope_scaling) and in transformers 5's style
// (rope_parameters), strictly: required fields, types, ranges, cross-field
// consistency, unsupported features. Writes one for synthetic checkpoints.
//
//===----------------------------------------------------------------------===//
#ifndef MELT_FRONTENDS_HF_HFCONFIG_H
#define MELT_FRONTENDS_HF_HFCONFIG_H

#include "frontends/ModelConfig.h"

#include "llvm/Support/JSON.h"

namespace mlir::melt {

/// Parses a config.json value; `file` names it in every message.
llvm::Expected<ModelConfig> parseHFConfig(const llvm::json::Value &json,
                                          llvm::StringRef file);

/// Reads and parses `path` (a config.json).
llvm::Expected<ModelConfig> readHFConfig(llvm::StringRef path);

/// The config.json of `config`, in the original DeepSeek style, as
/// transformers and DeepSeek's own code read it.
llvm::json::Value toHFConfig(const ModelConfig &config);

} // namespace mlir::melt

#endif // MELT_FRONTENDS_HF_HFCONFIG_H
