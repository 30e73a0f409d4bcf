//===- SafetensorsTest.cpp - header writer and reader -----------*- C++ -*-===//
#include "frontends/hf/Checkpoint.h"
#include "frontends/hf/Safetensors.h"

#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"

#include <gtest/gtest.h>

using namespace mlir::melt;

namespace {

/// Writes a safetensors file with the given tensors and zero data.
std::string writeFile(const std::vector<SafetensorsTensor> &tensors,
                      uint64_t dataBytes) {
  llvm::SmallString<128> path;
  llvm::sys::fs::createTemporaryFile("melt-st", "safetensors", path);
  std::error_code ec;
  llvm::raw_fd_ostream os(path, ec);
  os << serializeSafetensorsHeader(tensors, {{"format", "pt"}});
  os << std::string(dataBytes, '\0');
  return path.str().str();
}

SafetensorsTensor tensor(std::string name, std::string dtype,
                         std::vector<int64_t> shape, uint64_t begin,
                         uint64_t end) {
  SafetensorsTensor t;
  t.name = std::move(name);
  t.dtype = std::move(dtype);
  t.shape = std::move(shape);
  t.begin = begin;
  t.end = end;
  return t;
}

TEST(Safetensors, RoundTrip) {
  std::string path = writeFile({tensor("b", "F8_E4M3", {3, 4}, 8, 20),
                                tensor("a", "BF16", {2, 2}, 0, 8),
                                tensor("empty", "F32", {0, 7}, 20, 20)},
                               20);
  auto header = readSafetensorsHeader(path);
  ASSERT_TRUE(static_cast<bool>(header)) << llvm::toString(header.takeError());
  ASSERT_EQ(header->tensors.size(), 3u);
  EXPECT_EQ(header->tensors[0].name, "a"); // ordered by offset
  EXPECT_EQ(header->tensors[1].name, "b");
  EXPECT_EQ(header->tensors[1].dtype, "F8_E4M3");
  EXPECT_EQ(header->headerSize % 8, 0u); // padded like transformers
  EXPECT_EQ(header->metadata.at("format"), "pt");
  llvm::sys::fs::remove(path);
}

TEST(Safetensors, SubByteDTypesMustFillBytes) {
  std::string path = writeFile({tensor("x", "F4", {3}, 0, 1)}, 1);
  auto header = readSafetensorsHeader(path);
  ASSERT_FALSE(static_cast<bool>(header));
  EXPECT_NE(llvm::toString(header.takeError()).find("do not fill whole bytes"),
            std::string::npos);
  llvm::sys::fs::remove(path);
}

TEST(Safetensors, DTypeSizes) {
  EXPECT_EQ(safetensorsDTypeBits("F8_E4M3"), 8u);
  EXPECT_EQ(safetensorsDTypeBits("BF16"), 16u);
  EXPECT_EQ(safetensorsDTypeBits("F32"), 32u);
  EXPECT_EQ(safetensorsDTypeBits("F4"), 4u);
  EXPECT_EQ(safetensorsDTypeBits("Q8"), 0u);
}

TEST(Checkpoint, ContainedPaths) {
  EXPECT_TRUE(isContainedPath("model-00001-of-00163.safetensors"));
  EXPECT_TRUE(isContainedPath("sub/model.safetensors"));
  for (const char *bad : {"", "/abs.safetensors", "../x", "a/../../x", "a//b",
                          "./a", "a\\b"})
    EXPECT_FALSE(isContainedPath(bad)) << bad;
}

} // namespace
