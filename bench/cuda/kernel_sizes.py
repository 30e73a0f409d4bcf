#!/usr/bin/env python3
"""Each CUDA kernel's size in machine code, without a GPU or a disassembler.

Compiles the runtime's CUDA sources (the commands of a build's
compile_commands.json) to cubins for one architecture and reads each
kernel's `.text.<kernel>` section from the ELF: 16 bytes an instruction on
sm_70 and later (the count includes the few padding instructions to the
section's alignment). With --against FLAGS it compiles them a second time
with those flags added and prints both counts and the difference, kernel
by kernel: what a build option or a change of arithmetic takes out of the
straight-line code (a loop's body counts once; instructions that rarely
run, such as a division's slow path, count as much as those that always
do).

  bench/cuda/kernel_sizes.py [--build DIR] [--filter REGEX] [--flags F]
                             [--against F] [--arch sm_90a] [--min-change N]
e.g.
  bench/cuda/kernel_sizes.py --filter GroupedGemm --against=-ftz=true
"""
import argparse
import json
import re
import shlex
import struct
import subprocess
import sys
import tempfile
from pathlib import Path


def text_sections(cubin: bytes) -> dict:
    """{kernel name: instructions} from an ELF64 cubin's .text.* sections."""
    if cubin[:4] != b"\x7fELF" or cubin[4] != 2:
        raise ValueError("not an ELF64 file")
    shoff, = struct.unpack_from("<Q", cubin, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", cubin, 0x3A)
    headers = []
    for i in range(shnum):
        name, _, _, _, offset, size = struct.unpack_from(
            "<IIQQQQ", cubin, shoff + i * shentsize)
        headers.append((name, offset, size))
    strings_offset = headers[shstrndx][1]
    sizes = {}
    for name, _, size in headers:
        end = cubin.index(b"\0", strings_offset + name)
        section = cubin[strings_offset + name:end].decode()
        if section.startswith(".text."):
            sizes[section[len(".text."):]] = size // 16
    return sizes


def cubin_command(entry: dict, arch: str, flags: str, out: str) -> list:
    """The source's compile command, made to write one cubin for `arch`."""
    args = shlex.split(entry["command"])
    kept = []
    skip = False
    for a in args:
        if skip:
            skip = False
            continue
        if a == "-o":
            skip = True
            continue
        if a.startswith("--generate-code") or a.startswith("-gencode") or \
                a.startswith("-arch") or a.startswith("--gpu-architecture"):
            continue
        kept.append("-cubin" if a == "-c" else a)
    return kept + [f"-arch={arch}"] + shlex.split(flags) + ["-o", out]


def sizes_of(entry: dict, arch: str, flags: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "kernels.cubin")
        result = subprocess.run(cubin_command(entry, arch, flags, out),
                                cwd=entry["directory"], capture_output=True,
                                text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{entry['file']}: nvcc failed:\n"
                               f"{result.stderr[-2000:]}")
        try:
            return text_sections(Path(out).read_bytes())
        except (ValueError, struct.error) as error:
            raise RuntimeError(f"{entry['file']}: the cubin nvcc wrote is "
                               f"not one this reads ({error})") from error


def short(kernel: str) -> str:
    """A mangled kernel name without its namespaces and parameters."""
    try:
        name = subprocess.run(["c++filt", kernel], capture_output=True,
                              text=True).stdout.strip() or kernel
    except OSError:
        name = kernel
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"melt::rt::cuda::(\(anonymous namespace\)::)?", "", name)
    if name.endswith(")"):  # the parameters: from their matching "("
        depth = 0
        for i in range(len(name) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(name[i], 0)
            if depth == 0:
                name = name[:i]
                break
    return name


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build",
                        help="a build folder with compile_commands.json")
    parser.add_argument("--filter", default="",
                        help="only sources whose path matches this regex")
    parser.add_argument("--flags", default="", help="nvcc flags added")
    parser.add_argument("--against", default=None,
                        help="nvcc flags added for a second compile")
    parser.add_argument("--arch", default="sm_90a")
    parser.add_argument("--min-change", type=int, default=1,
                        help="with --against: kernels that change by fewer "
                        "instructions are not listed")
    args = parser.parse_args()
    commands = Path(args.build) / "compile_commands.json"
    if not commands.is_file():
        print(f"kernel_sizes.py: error: {commands} does not exist (configure "
              "the build first)", file=sys.stderr)
        return 2
    entries = [e for e in json.loads(commands.read_text())
               if e["file"].endswith(".cu") and "/tests/" not in e["file"]
               and "/bench/" not in e["file"]
               and re.search(args.filter, e["file"])]
    if not entries:
        print(f"kernel_sizes.py: error: no CUDA source of {commands} matches "
              f"'{args.filter}'", file=sys.stderr)
        return 2
    total = [0, 0]
    for entry in sorted(entries, key=lambda e: e["file"]):
        source = Path(entry["file"]).name
        try:
            base = sizes_of(entry, args.arch, args.flags)
            other = (sizes_of(entry, args.arch, args.flags + " " + args.against)
                     if args.against is not None else None)
        except RuntimeError as error:
            print(f"kernel_sizes.py: error: {error}", file=sys.stderr)
            return 1
        for kernel in sorted(base):
            total[0] += base[kernel]
            if other is None:
                print(f"{base[kernel]:7d}  {source}  {short(kernel)}")
                continue
            after = other.get(kernel, 0)
            total[1] += after
            if abs(after - base[kernel]) >= args.min_change:
                print(f"{base[kernel]:7d} {after:7d} {after - base[kernel]:+6d}"
                      f"  {source}  {short(kernel)}")
    if args.against is None:
        print(f"{total[0]:7d}  in all")
    else:
        print(f"{total[0]:7d} {total[1]:7d} {total[1] - total[0]:+6d}  in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
