#!/usr/bin/env python3
"""Fails where ptxas serializes a kernel's warpgroup MMAs.

ptxas says so only as information (-v): "Potential Performance Loss:
wgmma.mma_async instructions are serialized due to ..." (C7510-C7520),
for instance when a wgmma fence, commit or wait, or an accumulator, sits on
a path that ptxas cannot prove uniform across the warpgroup. The kernel
stays correct and its products no longer overlap: the grouped BF16 pair
once lost a fifth of its speed that way without any test noticing.

Each CUDA source of the runtime is compiled again, as the build compiles
it (its command from compile_commands.json), with -Xptxas=-v, into a
temporary object.

  check_wgmma_serialization.py BUILD_DIR [SOURCE_DIR_SUFFIX]
"""
import concurrent.futures
import json
import os
import shlex
import subprocess
import sys
import tempfile

MESSAGE = "Potential Performance Loss"


def compile_verbose(entry, scratch):
    """ptxas's messages for one compile_commands entry, and a failure."""
    args = shlex.split(entry["command"]) if "command" in entry else list(
        entry["arguments"])
    if "-o" in args:
        at = args.index("-o")
        args[at + 1] = os.path.join(
            scratch,
            os.path.basename(entry["file"]) + ".o")
    args.append("-Xptxas=-v")
    done = subprocess.run(args, cwd=entry["directory"], capture_output=True,
                          text=True)
    return done.returncode, done.stdout + done.stderr


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    build = sys.argv[1]
    suffix = sys.argv[2] if len(sys.argv) > 2 else "runtime/src/cuda"
    commands = os.path.join(build, "compile_commands.json")
    try:
        with open(commands) as f:
            entries = json.load(f)
    except (OSError, ValueError) as e:
        print(f"{commands}: cannot read it: {e}", file=sys.stderr)
        return 2
    sources = [
        e for e in entries if e["file"].endswith(".cu") and
        os.path.dirname(os.path.normpath(e["file"])).endswith(suffix)
    ]
    if not sources:
        print(f"{commands}: no CUDA source under {suffix} (built without "
              "CUDA?): nothing to check")
        return 0
    failures = []
    with tempfile.TemporaryDirectory() as scratch, \
            concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:
        results = pool.map(lambda e: (e, compile_verbose(e, scratch)),
                           sources)
        for entry, (code, output) in results:
            name = os.path.relpath(entry["file"])
            if code != 0:
                failures.append(f"{name}: did not compile:\n{output}")
                continue
            lines = [l for l in output.splitlines() if MESSAGE in l]
            if lines:
                failures.append(f"{name}:\n  " + "\n  ".join(lines))
    if failures:
        print("ptxas serializes warpgroup MMAs (keep wgmma fences, commits, "
              "waits and accumulators off divergent paths):")
        print("\n".join(failures))
        return 1
    print(f"{len(sources)} CUDA sources: no serialized warpgroup MMA")
    return 0


if __name__ == "__main__":
    sys.exit(main())
