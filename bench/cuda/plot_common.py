"""What the benchmark charts share: their command line (MELT.json
TORCH.json OUT.png), reading JSON lines, and matplotlib without a display."""
import json
import sys


def read(path):
    """The JSON objects of a benchmark's output, one per line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def inputs(usage):
    """melt's and torch's JSON objects, the output path and pyplot, from the
    command line; exits with `usage` when it is not three paths."""
    if len(sys.argv) != 4:
        sys.exit(usage)
    return read(sys.argv[1]), read(sys.argv[2]), sys.argv[3], pyplot()
