"""Imported first by every entry point (the recipes, the tools, the tests): torch's threads and
the Numba kernels' share the cores, and idle OpenMP workers must sleep rather than spin, or
they steal the cores from the threads doing work. libgomp reads ``OMP_WAIT_POLICY`` when it
loads, so this runs before torch is imported; a value set by the user stays."""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
