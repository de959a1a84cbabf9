"""Hold queued packets a fixed time per NFQUEUE queue: netem's `delay` for kernels built without netem.

One process serves several queues of its network namespace (`--queue 0=10 --queue 1=5`: queue 0 holds each
packet 10 ms, queue 1 5 ms) over one nfnetlink socket, asking the kernel for each packet's first 60 bytes (its
IPv4 and TCP headers). Each queue's hold is constant, so its packets leave in the order they came; a packet is
released by an NF_ACCEPT verdict.

Two phases, switched by signals so that one lab can measure its own baseline in the same run: `injected` (the
holds asked for; the start) and `control` (SIGUSR1: every hold is 0 ms — packets still make the same round trip
through this process, so the control measures the lab's own per-packet cost too); SIGUSR2 goes back to
`injected`. Each switch prints `netdelay phase <name>` once it applies to the next packet.

With `--record FILE`, every released packet is written there when the process stops, one JSON object per line:
queue, phase, the hold asked and the hold actually applied (ns, from this process's receipt of the packet to its
verdict), the wall-clock instant it arrived (ns since the epoch, the clock spans use), and its addresses, ports,
TCP flags and payload length — so a test can tell which packets a hop carried and what they were really held.

Run as root inside the namespace whose iptables rules send packets to those queues:

    ip netns exec hsl-node-1 python -m hopscope.instrumentation.meshlab.netdelay --queue 0=10 --queue 1=5

It prints one line per queue when it stops: packets released and their mean hold, the figure to compare with the
delay that was asked for.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_NO_ENOBUFS = 5
SO_RCVBUFFORCE = 33
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 0x2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = NFNL_SUBSYS_QUEUE << 8
NFQNL_MSG_VERDICT = (NFNL_SUBSYS_QUEUE << 8) | 1
NFQNL_MSG_CONFIG = (NFNL_SUBSYS_QUEUE << 8) | 2
NFQA_CFG_CMD, NFQA_CFG_PARAMS, NFQA_CFG_QUEUE_MAXLEN = 1, 2, 3
NFQNL_CFG_CMD_BIND, NFQNL_CFG_CMD_UNBIND = 1, 2
NFQNL_COPY_PACKET = 2
COPY_BYTES = 60                          # an IPv4 header (20) and a TCP header with options (up to 40)
NFQA_PACKET_HDR, NFQA_VERDICT_HDR, NFQA_PAYLOAD = 1, 2, 10
NF_ACCEPT = 1
NLMSG_HEADER = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
NFGEN_HEADER = struct.Struct("!BBH")     # family, version, resource id (= queue number), big-endian
PHASES = ("injected", "control")
IDLE_WAKEUP_S = 0.02


@dataclass(frozen=True)
class PacketHeader:
    """What a hop's accounting needs of a packet: its connection, direction, TCP flags and whether it carries data."""

    source: str
    destination: str
    source_port: int
    destination_port: int
    tcp_flags: int
    payload_bytes: int

    @staticmethod
    def parse(packet: bytes) -> PacketHeader | None:
        """IPv4 + TCP headers from the start of a packet; None for anything else."""
        if len(packet) < 20 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_TCP:
            return None
        ip_length = (packet[0] & 0x0F) * 4
        if len(packet) < ip_length + 14:
            return None
        total_length = struct.unpack_from("!H", packet, 2)[0]
        source_port, destination_port = struct.unpack_from("!HH", packet, ip_length)
        tcp_length = (packet[ip_length + 12] >> 4) * 4
        return PacketHeader(socket.inet_ntoa(packet[12:16]), socket.inet_ntoa(packet[16:20]), source_port,
                            destination_port, packet[ip_length + 13], total_length - ip_length - tcp_length)


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, flags: int, sequence: int, queue: int, attributes: bytes) -> bytes:
    body = NFGEN_HEADER.pack(socket.AF_UNSPEC, 0, queue) + attributes
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, sequence, 0) + body


@dataclass
class HeldPacket:
    due: float              # monotonic instant of its release
    packet_id: int
    arrived: float          # monotonic
    arrived_unix_ns: int    # wall clock, comparable with span timestamps
    asked_s: float
    phase: str
    header: PacketHeader | None


@dataclass
class HeldQueue:
    number: int
    hold_s: float
    waiting: collections.deque[HeldPacket] = field(default_factory=collections.deque)
    released: int = 0
    total_hold_s: float = 0.0
    longest_hold_s: float = 0.0


class PacketDelayer:
    def __init__(self, holds_ms: dict[int, float], max_queued: int = 8192, record: bool = False) -> None:
        self.queues = {number: HeldQueue(number, hold / 1000.0) for number, hold in holds_ms.items()}
        self.phase = PHASES[0]
        self.records: list[dict[str, object]] | None = [] if record else None
        self.sequence = 0
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_NO_ENOBUFS, 1)
        for number in self.queues:
            self._configure(number, _attribute(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_BIND, 0,
                                                                         socket.AF_INET)))
            self._configure(number, _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_BYTES, NFQNL_COPY_PACKET)))
            self._configure(number, _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", max_queued)))

    def _configure(self, queue: int, attributes: bytes) -> None:
        self.sequence += 1
        self.sock.send(_message(NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, self.sequence, queue, attributes))
        reply = self.sock.recv(65536)
        if NLMSG_HEADER.unpack_from(reply)[1] == NLMSG_ERROR:
            (error,) = struct.unpack_from("=i", reply, NLMSG_HEADER.size)
            if error:
                raise OSError(-error, f"configuring NFQUEUE {queue}: {os.strerror(-error)}")

    def _accept(self, queue: int, packet_id: int) -> None:
        self.sequence += 1
        verdict = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", NF_ACCEPT, packet_id))
        self.sock.send(_message(NFQNL_MSG_VERDICT, NLM_F_REQUEST, self.sequence, queue, verdict))

    def _receive(self) -> None:
        while True:
            try:
                data = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            now = time.monotonic()
            offset = 0
            while offset + NLMSG_HEADER.size <= len(data):
                length, kind = NLMSG_HEADER.unpack_from(data, offset)[:2]
                if length < NLMSG_HEADER.size:
                    break
                if kind == NFQNL_MSG_PACKET:
                    self._hold(data, offset, length, now)
                offset += (length + 3) & ~3

    def _hold(self, data: bytes, offset: int, length: int, now: float) -> None:
        queue = self.queues.get(NFGEN_HEADER.unpack_from(data, offset + NLMSG_HEADER.size)[2])
        position = offset + NLMSG_HEADER.size + NFGEN_HEADER.size
        packet_id, header = None, None
        while queue is not None and position + 4 <= offset + length:
            attribute_length, kind = struct.unpack_from("=HH", data, position)
            if attribute_length < 4:
                break
            if kind & 0x3FFF == NFQA_PACKET_HDR:
                (packet_id,) = struct.unpack_from("!I", data, position + 4)
            elif kind & 0x3FFF == NFQA_PAYLOAD:
                header = PacketHeader.parse(data[position + 4:position + attribute_length])
            position += (attribute_length + 3) & ~3
        if queue is not None and packet_id is not None:
            hold = queue.hold_s if self.phase == "injected" else 0.0
            queue.waiting.append(HeldPacket(now + hold, packet_id, now, time.time_ns(), hold, self.phase, header))

    def _release(self, queue: HeldQueue, now: float) -> None:
        packet = queue.waiting.popleft()
        self._accept(queue.number, packet.packet_id)
        held = now - packet.arrived
        queue.released += 1
        queue.total_hold_s += held
        queue.longest_hold_s = max(queue.longest_hold_s, held)
        if self.records is not None:
            header = dataclasses.asdict(packet.header) if packet.header else {}
            self.records.append({"queue": queue.number, "phase": packet.phase,
                                 "arrived_unix_ns": packet.arrived_unix_ns, "asked_ns": round(packet.asked_s * 1e9),
                                 "held_ns": round(held * 1e9), **header})

    def run(self, should_stop: list[bool], phase_asked: list[str]) -> None:
        while not should_stop[0]:
            if phase_asked[0] != self.phase:
                self.phase = phase_asked[0]
                print(f"netdelay phase {self.phase}", flush=True)
            due = [queue.waiting[0].due for queue in self.queues.values() if queue.waiting]
            # idle: wake every 20 ms, so a phase switch (a signal, which select() sleeps through) applies promptly
            timeout = max(0.0, min(due) - time.monotonic()) if due else IDLE_WAKEUP_S
            if select.select([self.sock], [], [], timeout)[0]:
                self._receive()
            now = time.monotonic()
            for queue in self.queues.values():
                while queue.waiting and queue.waiting[0].due <= now:
                    self._release(queue, now)
        for queue in self.queues.values():   # nothing stays held when we stop
            while queue.waiting:
                self._release(queue, time.monotonic())
            self._configure(queue.number, _attribute(NFQA_CFG_CMD, struct.pack("!BBH", NFQNL_CFG_CMD_UNBIND, 0, 0)))
        self.sock.close()


def _run_before_the_traffic() -> None:
    """Real-time priority, so that a busy machine delays a release as little as it would delay netem in the
    kernel (the process sleeps in select() between releases, so it never starves anyone)."""
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(20))
    except (AttributeError, PermissionError, OSError) as exc:
        print(f"netdelay: no real-time priority ({exc}); releases may lag on a busy machine", flush=True)


def _queue_hold(text: str) -> tuple[int, float]:
    number, _, hold = text.partition("=")
    try:
        return int(number), float(hold)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected QUEUE=MILLISECONDS, e.g. 0=10, not {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="netdelay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", type=_queue_hold, action="append", required=True, metavar="QUEUE=MS",
                        help="an NFQUEUE number and the milliseconds each of its packets is held (repeatable)")
    parser.add_argument("--record", default=None, metavar="FILE",
                        help="write every released packet (headers, phase, hold asked and applied) here at exit")
    arguments = parser.parse_args(argv)
    should_stop = [False]
    phase_asked = [PHASES[0]]

    def stop(*_: object) -> None:
        should_stop[0] = True

    def switch_to(phase: str) -> Callable[..., None]:
        return lambda *_: phase_asked.__setitem__(0, phase)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGUSR1, switch_to("control"))
    signal.signal(signal.SIGUSR2, switch_to("injected"))
    _run_before_the_traffic()
    delayer = PacketDelayer(dict(arguments.queue), record=arguments.record is not None)
    print("netdelay ready: " + ", ".join(f"queue {q.number} holds {q.hold_s * 1000:g} ms"
                                         for q in delayer.queues.values()), flush=True)
    delayer.run(should_stop, phase_asked)
    if arguments.record is not None and delayer.records is not None:
        with open(arguments.record, "w") as out:
            out.writelines(json.dumps(record) + "\n" for record in delayer.records)
    for queue in delayer.queues.values():
        mean = queue.total_hold_s / queue.released * 1000 if queue.released else 0.0
        print(f"netdelay queue {queue.number}: released {queue.released} packets, mean hold {mean:.3f} ms, "
              f"longest {queue.longest_hold_s * 1000:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
