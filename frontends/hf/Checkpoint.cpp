//===- Checkpoint.cpp - a Hugging Face checkpoint directory -----*- C++ -*-===//
#include "frontends/hf/Checkpoint.h"

#include "frontends/hf/StrictJson.h"

#include "llvm/ADT/StringExtras.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/FormatVariadic.h"
#include "llvm/Support/Path.h"

#include <set>

using namespace mlir::melt;

namespace {
constexpr llvm::StringLiteral kIndexName = "model.safetensors.index.json";
constexpr llvm::StringLiteral kSingleName = "model.safetensors";
/// The index of DeepSeek-V3 is ~9 MB; allow much more, not unbounded.
constexpr uint64_t kMaxIndexBytes = 512 << 20;
} // namespace

bool mlir::melt::isContainedPath(llvm::StringRef file) {
  if (file.empty() || file.starts_with("/") || file.contains('\\') ||
      file.contains('\0'))
    return false;
  llvm::SmallVector<llvm::StringRef> parts;
  file.split(parts, '/');
  for (llvm::StringRef part : parts)
    if (part.empty() || part == "." || part == "..")
      return false;
  return true;
}

std::string Checkpoint::path(llvm::StringRef file) const {
  llvm::SmallString<256> p(dir);
  llvm::sys::path::append(p, file);
  return p.str().str();
}

llvm::ErrorOr<std::unique_ptr<llvm::MemoryBuffer>>
Checkpoint::readBytes(const CheckpointTensor &t) const {
  return llvm::MemoryBuffer::getFileSlice(path(t.file), t.bytes, t.offset);
}

llvm::Expected<Checkpoint> Checkpoint::open(llvm::StringRef directory) {
  Checkpoint ckpt;
  ckpt.dir = directory.str();
  if (!llvm::sys::fs::is_directory(directory))
    return fileError(directory, "is not a directory");

  // Which shards, and what the index says each holds.
  llvm::StringMap<std::string> indexed; // tensor -> shard
  std::string indexPath = ckpt.path(kIndexName);
  if (llvm::sys::fs::exists(indexPath)) {
    llvm::Expected<llvm::json::Value> index =
        readStrictJsonFile(indexPath, kMaxIndexBytes);
    if (!index)
      return index.takeError();
    const llvm::json::Object *root = index->getAsObject();
    const llvm::json::Object *map = root ? root->getObject("weight_map")
                                         : nullptr;
    if (!map)
      return fileError(indexPath, "'weight_map' must be an object mapping "
                                  "tensor names to shard files");
    if (const llvm::json::Value *metadata = root->get("metadata"))
      if (!metadata->getAsObject() && metadata->kind() !=
                                          llvm::json::Value::Null)
        return fileError(indexPath, "'metadata' must be an object");
    std::set<std::string> shards;
    for (const auto &entry : *map) {
      std::optional<llvm::StringRef> shard = entry.second.getAsString();
      if (!shard)
        return fileError(indexPath, "'weight_map." + entry.first.str() +
                                        "' must be a shard file name");
      if (!isContainedPath(*shard))
        return fileError(indexPath,
                         "'weight_map." + entry.first.str() + "': shard '" +
                             *shard +
                             "' is not a path inside the checkpoint directory");
      indexed[entry.first] = shard->str();
      shards.insert(shard->str());
    }
    ckpt.shardFiles.assign(shards.begin(), shards.end());
  } else if (llvm::sys::fs::exists(ckpt.path(kSingleName))) {
    ckpt.shardFiles.push_back(kSingleName.str());
  } else {
    return fileError(directory, "holds neither model.safetensors nor "
                                "model.safetensors.index.json");
  }

  llvm::SmallString<256> realDir;
  if (std::error_code ec = llvm::sys::fs::real_path(directory, realDir))
    return fileError(directory, "cannot resolve: " + ec.message());
  for (const std::string &shard : ckpt.shardFiles) {
    std::string shardPath = ckpt.path(shard);
    if (!llvm::sys::fs::is_regular_file(shardPath))
      return fileError(indexPath, "shard '" + shard +
                                      "' named by the index does not exist");
    // A symbolic link must not lead out of the checkpoint either.
    llvm::SmallString<256> realShard;
    if (llvm::sys::fs::real_path(shardPath, realShard) ||
        !llvm::StringRef(realShard).starts_with((realDir + "/").str()))
      return fileError(shardPath, "resolves to a file outside the checkpoint "
                                  "directory");
    llvm::Expected<SafetensorsHeader> header = readSafetensorsHeader(shardPath);
    if (!header)
      return header.takeError();
    for (SafetensorsTensor &t : header->tensors) {
      auto [it, inserted] = ckpt.tensors.try_emplace(t.name);
      if (!inserted)
        return fileError(shardPath, "tensor '" + t.name +
                                        "' is also in shard '" +
                                        it->second.file + "'");
      CheckpointTensor &ct = it->second;
      ct.file = shard;
      ct.dtype = t.dtype;
      ct.shape = t.shape;
      ct.offset = header->dataOffset() + t.begin;
      ct.bytes = t.end - t.begin;
      if (!indexed.empty()) {
        auto where = indexed.find(t.name);
        if (where == indexed.end())
          return fileError(shardPath, "tensor '" + t.name +
                                          "' is not in the index");
        if (where->second != shard)
          return fileError(shardPath, "tensor '" + t.name +
                                          "' is in this shard, but the index "
                                          "places it in '" +
                                          where->second + "'");
      }
    }
  }
  for (const auto &entry : indexed)
    if (!ckpt.tensors.count(entry.first()))
      return fileError(indexPath, "tensor '" + entry.first() +
                                      "' is missing from its shard '" +
                                      entry.second + "'");
  return ckpt;
}
