"""Hold queued packets a fixed time per NFQUEUE queue: netem's `delay` for kernels built without netem.

One process serves several queues of its network namespace (`--queue 0=10 --queue 1=5`: queue 0 holds each
packet 10 ms, queue 1 5 ms) over one nfnetlink socket, asking the kernel for packet metadata only. Each queue's
hold is constant, so its packets leave in the order they came; a packet is released by an NF_ACCEPT verdict.

Run as root inside the namespace whose iptables rules send packets to those queues:

    ip netns exec hsl-node-1 python -m hopscope.instrumentation.meshlab.netdelay --queue 0=10 --queue 1=5

It prints one line per queue when it stops: packets released and their mean hold, the figure to compare with the
delay that was asked for.
"""

from __future__ import annotations

import argparse
import collections
import os
import select
import signal
import socket
import struct
import sys
import time
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
NFQNL_COPY_META = 1
NFQA_PACKET_HDR, NFQA_VERDICT_HDR = 1, 2
NF_ACCEPT = 1
NLMSG_HEADER = struct.Struct("=IHHII")   # length, type, flags, sequence, port id
NFGEN_HEADER = struct.Struct("!BBH")     # family, version, resource id (= queue number), big-endian


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def _message(kind: int, flags: int, sequence: int, queue: int, attributes: bytes) -> bytes:
    body = NFGEN_HEADER.pack(socket.AF_UNSPEC, 0, queue) + attributes
    return NLMSG_HEADER.pack(NLMSG_HEADER.size + len(body), kind, flags, sequence, 0) + body


@dataclass
class HeldQueue:
    number: int
    hold_s: float
    waiting: collections.deque[tuple[float, int, float]] = field(default_factory=collections.deque)
    released: int = 0
    total_hold_s: float = 0.0
    longest_hold_s: float = 0.0


class PacketDelayer:
    def __init__(self, holds_ms: dict[int, float], max_queued: int = 8192) -> None:
        self.queues = {number: HeldQueue(number, hold / 1000.0) for number, hold in holds_ms.items()}
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
            self._configure(number, _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META)))
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
        while queue is not None and position + 4 <= offset + length:
            attribute_length, kind = struct.unpack_from("=HH", data, position)
            if attribute_length < 4:
                return
            if kind & 0x3FFF == NFQA_PACKET_HDR:
                (packet_id,) = struct.unpack_from("!I", data, position + 4)
                queue.waiting.append((now + queue.hold_s, packet_id, now))
                return
            position += (attribute_length + 3) & ~3

    def run(self, should_stop: list[bool]) -> None:
        while not should_stop[0]:
            due = [queue.waiting[0][0] for queue in self.queues.values() if queue.waiting]
            timeout = max(0.0, min(due) - time.monotonic()) if due else 0.5
            if select.select([self.sock], [], [], timeout)[0]:
                self._receive()
            now = time.monotonic()
            for queue in self.queues.values():
                while queue.waiting and queue.waiting[0][0] <= now:
                    _, packet_id, arrived = queue.waiting.popleft()
                    self._accept(queue.number, packet_id)
                    queue.released += 1
                    queue.total_hold_s += now - arrived
                    queue.longest_hold_s = max(queue.longest_hold_s, now - arrived)
        for queue in self.queues.values():   # nothing stays held when we stop
            while queue.waiting:
                self._accept(queue.number, queue.waiting.popleft()[1])
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
    arguments = parser.parse_args(argv)
    should_stop = [False]

    def stop(*_: object) -> None:
        should_stop[0] = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    _run_before_the_traffic()
    delayer = PacketDelayer(dict(arguments.queue))
    print("netdelay ready: " + ", ".join(f"queue {q.number} holds {q.hold_s * 1000:g} ms"
                                         for q in delayer.queues.values()), flush=True)
    delayer.run(should_stop)
    for queue in delayer.queues.values():
        mean = queue.total_hold_s / queue.released * 1000 if queue.released else 0.0
        print(f"netdelay queue {queue.number}: released {queue.released} packets, mean hold {mean:.3f} ms, "
              f"longest {queue.longest_hold_s * 1000:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
