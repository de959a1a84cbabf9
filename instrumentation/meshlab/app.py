"""A lab service: an HTTP app instrumented with `setup_tracing`, doing a known amount of work per request.

Each request gets a SERVER span (W3C context taken from the headers, so it hangs under the sidecar's inbound
span), then the app works `--work-ms` (a sleep: the injected app time, its real length recorded on the span as
`lab.work_slept_ms`), then calls each `--call` service, one
after the other or all at once (`--parallel`), each in a CLIENT span whose context it propagates. It dials the
callee's pod address as a plain app would; the pod's iptables rules hand that connection to its sidecar.
A downstream failure is answered with 502, and a request with `fail=1` in its query fails the leaves (503).

    python -m hopscope.instrumentation.meshlab.app --service reviews --work-ms 8 \
        --call ratings=10.78.4.2 --otlp 10.78.0.1:4317 --node node-2
"""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry import context, propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from hopscope.instrumentation.meshlab.spec import APP_PORT, NAMESPACE
from hopscope.instrumentation.tracing import setup_tracing


def _callee(text: str) -> tuple[str, str]:
    service, _, address = text.partition("=")
    if not service or not address:
        raise argparse.ArgumentTypeError(f"expected SERVICE=ADDRESS, e.g. ratings=10.78.4.2, not {text!r}")
    return service, address


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="meshlab-app", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--service", required=True, help="service.name")
    parser.add_argument("--node", required=True, help="k8s.node.name of the pod (its clock domain)")
    parser.add_argument("--otlp", required=True, help="OTLP/gRPC host:port of hopscope")
    parser.add_argument("--work-ms", type=float, default=0.0, help="work per request, before the calls")
    parser.add_argument("--call", type=_callee, action="append", default=[], metavar="SERVICE=ADDRESS",
                        help="a service to call per request and its pod address (repeatable)")
    parser.add_argument("--parallel", action="store_true", help="make the calls concurrently (a fan-out)")
    parser.add_argument("--port", type=int, default=APP_PORT)
    return parser.parse_args(argv)


class LabApp:
    def __init__(self, arguments: argparse.Namespace) -> None:
        self.arguments = arguments
        self.tracer = trace.get_tracer("hopscope.meshlab.app")
        self.pool = ThreadPoolExecutor(max_workers=max(1, len(arguments.call))) if arguments.parallel else None

    def handle(self, path: str, headers: dict[str, str]) -> tuple[int, dict]:
        route, _, query = path.partition("?")
        with self.tracer.start_as_current_span(
                f"GET {route}", context=propagate.extract(headers), kind=SpanKind.SERVER,
                attributes={"http.request.method": "GET", "url.path": route, "url.scheme": "http",
                            "server.port": self.arguments.port, "http.route": route}) as span:
            started = time.perf_counter()
            time.sleep(self.arguments.work_ms / 1000.0)
            # what the work really took (a busy machine sleeps longer): the truth a test compares app time with
            span.set_attribute("lab.work_slept_ms", (time.perf_counter() - started) * 1000.0)
            status, body = 200, {"service": self.arguments.service}
            if not self.arguments.call and "fail=1" in query.split("&"):
                status, body["error"] = 503, "failure asked for"
            calls = [(service, address, query) for service, address in self.arguments.call]
            if self.pool is not None:
                parent = context.get_current()
                results = list(self.pool.map(lambda call: self._call_in(parent, *call), calls))
            else:
                results = [self._call(*call) for call in calls]
            for (service, _, _), (call_status, _) in zip(calls, results, strict=True):
                body[service] = call_status
                if call_status >= 500:
                    status = 502
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return status, body

    def _call_in(self, parent: context.Context, service: str, address: str, query: str) -> tuple[int, str]:
        token = context.attach(parent)
        try:
            return self._call(service, address, query)
        finally:
            context.detach(token)

    def _call(self, service: str, address: str, query: str) -> tuple[int, str]:
        host = f"{service}.{NAMESPACE}.svc.cluster.local:{APP_PORT}"
        target = "/work" + (f"?{query}" if query else "")
        with self.tracer.start_as_current_span("GET", kind=SpanKind.CLIENT, attributes={
                "http.request.method": "GET", "url.full": f"http://{host}{target}",
                "server.address": host.split(":")[0], "server.port": APP_PORT}) as span:
            headers = {"Host": host, "User-Agent": f"{self.arguments.service}-client"}
            propagate.inject(headers)
            # A new connection per call, as the reference app makes: each call crosses the redirect to the sidecar
            # twice before its request reaches Envoy (the SYN, then the request).
            connection = http.client.HTTPConnection(address, APP_PORT, timeout=10)
            try:
                connection.request("GET", target, headers=headers)
                response = connection.getresponse()
                payload = response.read().decode(errors="replace")
            except OSError as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, str(exc)))
                return 599, str(exc)
            finally:
                connection.close()
            span.set_attribute("http.response.status_code", response.status)
            if response.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response.status, payload


def _handler(app: LabApp) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"   # keep-alive, as behind a real sidecar

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without TCP_NODELAY, Nagle and the sidecar's delayed ACK can
            # hold the body ~40 ms after our span ended, which would show up as phantom proxy time.
            self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            status, body = app.handle(self.path, dict(self.headers.items()))
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    provider = setup_tracing(arguments.service, endpoint=arguments.otlp, resource_attributes={
        "k8s.node.name": arguments.node, "k8s.namespace.name": NAMESPACE, "k8s.pod.name": f"{arguments.service}-pod",
        "service.namespace": NAMESPACE})
    server = ThreadingHTTPServer(("0.0.0.0", arguments.port), _handler(LabApp(arguments)))
    server.daemon_threads = True

    def stop(*_: object) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"{arguments.service} listening on :{arguments.port}", flush=True)
    server.serve_forever()
    provider.shutdown()   # flushes the batch processor: every finished span is exported before we exit
    return 0


if __name__ == "__main__":
    sys.exit(main())
