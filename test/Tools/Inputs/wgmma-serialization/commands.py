"""Writes OUTDIR/compile_commands.json: SOURCE compiled by NVCC for sm_90a
as the build compiles the runtime's CUDA sources (its headers from
SRC_ROOT/runtime/src), with FLAGs added, for check_wgmma_serialization.py.

  commands.py OUTDIR NVCC SRC_ROOT SOURCE [FLAG...]
"""
import json
import os
import sys

out, nvcc, root, source, *flags = sys.argv[1:]
command = (f"{nvcc} {' '.join(flags)} -I{root}/runtime/src -O3 "
           "--generate-code=arch=compute_90a,code=[compute_90a,sm_90a] "
           f"-std=c++17 -x cu -c {source} -o {os.path.basename(source)}.o")
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "compile_commands.json"), "w") as f:
    json.dump([{"directory": out, "file": source, "command": command}], f)
