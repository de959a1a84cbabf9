"""hopscope: where does a service-mesh request's latency go?

This package's own modules (the `cli/` folder) are the composition root: the `hopscope` command that wires the
collector, the analytics and the instrumentation together. They import the three; the three never import them.
"""

__version__ = "0.1.0"
