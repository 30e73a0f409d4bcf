# -*- Python -*- lit configuration of melt's regression tests.
import os
import shutil
import sys

import lit.formats
from lit.llvm import llvm_config

config.name = "melt"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.melt_obj_root, "test")
config.excludes = ["CMakeLists.txt", "README.md", "lit.cfg.py",
                   "lit.site.cfg.py", "Inputs", "unit", "malformed",
                   "golden"]

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%python", sys.executable))
config.substitutions.append(("%melt_src_root", config.melt_src_root))
# CUDA's compiler, where the machine has one (the CUDA lint's own tests).
nvcc = shutil.which("nvcc") or next(
    (p for p in ["/usr/local/cuda/bin/nvcc"] if os.path.exists(p)), None)
if nvcc:
    config.available_features.add("nvcc")
    config.substitutions.append(("%nvcc", nvcc))
llvm_config.use_default_substitutions()
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)

tool_dirs = [config.melt_tools_dir, config.llvm_tools_dir]
llvm_config.add_tool_substitutions(
    ["melt-opt", "melt-import", "melt-compile", "melt-run", "melt-synthesize"],
    tool_dirs)
