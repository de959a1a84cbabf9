"""What the lab really did to each hop, from its own records: the truth the real-mesh test holds hopscope to.

hopscope is never asked. The delayers record every packet they released (netdelay.py `--record`): its queue, the
phase, the hold asked and the hold applied, the wall-clock instant it arrived (every pod shares the host's clock, as
the spans do), its addresses, ports, TCP flags and payload length. A hop's packets are the ones between its two pods
(or on its caller's redirect leg) that arrived inside the hop's own span, and what they were held is what the lab
put on that hop:

- network: the request's and the response's data packets each cross the link once and are held once; on a new
  upstream connection the SYN and SYN-ACK cross it first (a handshake the sidecar waited for).
- interception: the caller app opens a connection to its sidecar per call; its SYN and then its request are held on
  the redirect leg (the reply direction is not queued). Two calls fanned out at once share the window, and nothing
  in the packets tells which is which: a hop gets the mean of the connections seen (their holds differ by µs).
- app work: the apps record how long their work (a sleep) really took, `lab.work_slept_ms` on their SERVER span.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from hopscope.instrumentation.meshlab import LabSpec
from hopscope.instrumentation.meshlab.network import CROSS_NODE_QUEUE, INTERCEPT_QUEUE, SAME_NODE_QUEUE

SYN, ACK = 0x02, 0x10


@dataclass(frozen=True)
class HopTruth:
    network_ms: float        # holds applied on the link to this hop's packets
    interception_ms: float   # holds applied on the caller's redirect leg (0 where it is not delayed)
    new_connection: bool     # a SYN crossed the link inside the hop: the sidecar dialled anew


def _mean_hold_ms(packets: list[dict[str, Any]]) -> float:
    return statistics.fmean(packet["held_ns"] for packet in packets) / 1e6


def _in_window(packets: list[dict[str, Any]], start_ns: int, end_ns: int) -> list[dict[str, Any]]:
    return [packet for packet in packets if start_ns <= packet["arrived_unix_ns"] <= end_ns]


class LabTruth:
    """Index the delayers' records once; ask per hop."""

    def __init__(self, spec: LabSpec, packets: list[dict[str, Any]]) -> None:
        self.spec = spec
        self.link = [p for p in packets if p["queue"] in (CROSS_NODE_QUEUE, SAME_NODE_QUEUE) and "source" in p]
        self.redirect: dict[str, list[dict[str, Any]]] = {}
        for packet in packets:
            if packet["queue"] == INTERCEPT_QUEUE and "source" in packet:
                self.redirect.setdefault(packet["delayer"], []).append(packet)

    def hop(self, caller: str, callee: str, start_ns: int, end_ns: int) -> HopTruth:
        caller_ip = self.spec.pod_address(self.spec.pod(caller))
        callee_ip = self.spec.pod_address(self.spec.pod(callee))
        between = [p for p in _in_window(self.link, start_ns, end_ns)
                   if {p["source"], p["destination"]} == {caller_ip, callee_ip}]
        request = [p for p in between if p["source"] == caller_ip and p["payload_bytes"] > 0]
        response = [p for p in between if p["source"] == callee_ip and p["payload_bytes"] > 0]
        if not request or not response:
            raise AssertionError(f"{caller}→{callee} at {start_ns}: no request or response packet was held in the "
                                 f"hop's window ({len(between)} packets between the pods)")
        handshake = [p for p in between if p["tcp_flags"] & SYN]
        network = _mean_hold_ms(request) + _mean_hold_ms(response) + sum(p["held_ns"] for p in handshake) / 1e6
        return HopTruth(network, self._interception_ms(caller, start_ns, end_ns), bool(handshake))

    def _interception_ms(self, caller: str, start_ns: int, end_ns: int) -> float:
        connections: dict[int, list[dict[str, Any]]] = {}
        for packet in _in_window(self.redirect.get(caller, []), start_ns, end_ns):
            connections.setdefault(packet["source_port"], []).append(packet)
        holds = []
        for packets in connections.values():
            syn = [p for p in packets if p["tcp_flags"] & SYN and not p["tcp_flags"] & ACK]
            data = [p for p in packets if p["payload_bytes"] > 0]
            if syn and data:
                holds.append((syn[0]["held_ns"] + data[0]["held_ns"]) / 1e6)
        return statistics.fmean(holds) if holds else 0.0

    def holds_shorter_than_asked(self) -> list[dict[str, Any]]:
        """Packets released before their hold was over: must be none (the lower bound every check relies on)."""
        return [p for p in [*self.link, *(p for ps in self.redirect.values() for p in ps)]
                if p["held_ns"] < p["asked_ns"]]

    def hold_accuracy_ms(self) -> dict[str, float]:
        """Applied − asked over the injected phase's packets: how exact the delayer was in this run."""
        excess = sorted((p["held_ns"] - p["asked_ns"]) / 1e6
                        for p in [*self.link, *(p for ps in self.redirect.values() for p in ps)]
                        if p["phase"] == "injected")
        return {"packets": len(excess), "median": statistics.median(excess), "p99": excess[int(len(excess) * 0.99)],
                "max": excess[-1]}
