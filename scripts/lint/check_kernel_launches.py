#!/usr/bin/env python3
"""Checks the contract of runtime/src/cuda/DependentLaunch.cuh.

melt's kernels are launched with launchOverlapped, which lets a kernel start
while the kernel ahead of it still runs; each must wait for it
(awaitPriorKernels) before it touches the step's memory. A kernel without
the wait would race with the kernel ahead, and only now and then. So: every
__global__ function under the given folder calls awaitPriorKernels() (or a
__device__ function of the folder whose body does, such as RowNorm.cuh's
normRow), and no kernel there is launched with <<< >>> (which would hide a
new kernel from this rule's reason to exist: every launch is an overlapped
one).

  check_kernel_launches.py runtime/src/cuda
"""
import pathlib
import re
import sys


def kernels(text):
    """(name, body) of each __global__ function."""
    for match in re.finditer(r"__global__\s", text):
        at = match.end()
        bounds = re.match(r"\s*(?:void\s+)?__launch_bounds__\s*\(", text[at:])
        if bounds:
            at = close(text, at + bounds.end() - 1, "(", ")") + 1
        name = re.search(r"(\w+)\s*\(", text[at:])
        params = at + name.end() - 1
        body = text.index("{", close(text, params, "(", ")"))
        yield name.group(1), text[body:close(text, body, "{", "}") + 1]


def awaiting_helpers(folder):
    """Names of the __device__ functions of the folder that wait."""
    names = set()
    for path in sorted(folder.glob("*.cu*")):
        text = path.read_text()
        for match in re.finditer(r"__device__\s[^;{]*?(\w+)\s*\(", text):
            if match.group(1) == "awaitPriorKernels":
                continue
            params = match.end() - 1
            try:
                end = close(text, params, "(", ")")
            except ValueError:
                continue
            body = re.match(r"\s*(?:const\s*)?\{", text[end + 1:])
            if not body:
                continue
            start = end + 1 + body.end() - 1
            if "awaitPriorKernels()" in text[start:close(text, start, "{", "}")]:
                names.add(match.group(1))
    return names


def close(text, at, opening, closing):
    depth = 0
    for i in range(at, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced {opening}{closing}")


def main():
    folder = pathlib.Path(sys.argv[1])
    problems = []
    count = 0
    helpers = awaiting_helpers(folder)
    for path in sorted(folder.glob("*.cu")):
        text = path.read_text()
        for line, source in enumerate(text.splitlines(), 1):
            if "<<<" in source and not source.lstrip().startswith("//"):
                problems.append(f"{path}:{line}: a <<< >>> launch (use "
                                "launchOverlapped, DependentLaunch.cuh)")
        for name, body in kernels(text):
            count += 1
            waits = "awaitPriorKernels()" in body or any(
                re.search(rf"\b{h}\s*(<[^;]*?>)?\s*\(", body)
                for h in helpers)
            if not waits:
                problems.append(f"{path}: kernel {name} never calls "
                                "awaitPriorKernels()")
    for problem in problems:
        print(problem)
    if count == 0:
        print(f"{folder}: no kernels found")
        return 1
    print(f"{count} kernels checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
