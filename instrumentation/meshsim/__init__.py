"""A service-mesh simulator that emits the spans real Envoy/Istio sidecars and OTel-instrumented apps emit, and
records the true latency of every hop beside them (iptables, proxy, network, app, retry).

    from hopscope.instrumentation.meshsim import MeshSimulator, Options, load_topology
    simulator = MeshSimulator(load_topology("bookinfo"), seed=7, options=Options(spawn_upstream_span=True))
    request = simulator.request(at_us=time.time_ns() // 1000)   # .spans, .hops (the truth)
"""

from hopscope.instrumentation.meshsim.engine import MeshSimulator
from hopscope.instrumentation.meshsim.model import HopTruth, Options, SimSpan, SimulatedRequest
from hopscope.instrumentation.meshsim.topology import BUILT_IN, Topology, load_topology

__all__ = ["BUILT_IN", "HopTruth", "MeshSimulator", "Options", "SimSpan", "SimulatedRequest", "Topology",
           "load_topology"]
