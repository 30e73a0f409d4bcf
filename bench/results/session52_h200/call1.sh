#!/usr/bin/env bash
# Session 52, call 1: session 51's persistent wgmma attention
# (session51_h200/causal-persistent-unmeasured.diff) against main, which now
# builds its tensor maps through one rank-generic encoder (TensorMaps.cu);
# the patched build's kernel tests and device conformance run both.
#   bash bench/results/session52_h200/call1.sh   (there, after prepare.sh --mini here)
exec bash "$(dirname "$0")/../session51_h200/next-call.sh"
