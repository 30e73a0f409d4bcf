"""What the benchmark charts share: reading JSON lines, and matplotlib
without a display."""
import json


def read(path):
    """The JSON objects of a benchmark's output, one per line."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt
