"""The metrics node: bus events -> a Prometheus HTTP endpoint (``[metrics] port``/``bind``).

It only listens: every number comes from events on the bus (no requests to other nodes), so a
scrape never disturbs trading. The HTTP server runs in prometheus_client's own daemon thread and
reads a private registry; the loop thread updates it.
"""
import time

from prometheus_client import CollectorRegistry, start_http_server

from nodes.config import ConfigError
from nodes.runtime import Node, NodeStartError
from proto import topics

from .collect import MeshMetrics

# not md.tick / md.trade (the busiest topics): tick and trade counts come from the market-data
# node's heartbeat, the last price from risk.band.<P>
SUBSCRIPTIONS = (topics.MD_STATUS, topics.MD_GAP, topics.MD_STALE,
                 topics.RISK, topics.ORDER, topics.FILL, topics.POSITION, topics.PNL, topics.NODE,
                 topics.ALERT)


class MetricsNode(Node):
    """Prometheus endpoint fed from bus events."""

    name = "metrics"
    subscriptions = SUBSCRIPTIONS

    def __init__(self, mesh, conf=None, **kw):
        super().__init__(mesh, conf, **kw)
        if self.conf is None:
            from .config import MetricsConfig
            self.conf = MetricsConfig()
        ports = mesh.tcp_ports()
        if mesh.transport == "tcp" and self.conf.port in ports:
            raise ConfigError(f"metrics.port: {self.conf.port} is one of the mesh's own tcp ports "
                              f"({ports[0]}-{ports[-1]} from mesh.base_port {mesh.base_port}); choose another")
        self.registry = CollectorRegistry()
        self.metrics = MeshMetrics(self.registry, node_timeout_s=self.conf.node_timeout_s,
                                   roundtrip_buckets=self.conf.roundtrip_buckets,
                                   tick_to_trade_buckets=self.conf.tick_to_trade_buckets,
                                   own_counters=self._own)
        for msg_type in self.metrics.handlers():
            self.on(msg_type, self.metrics.handle)
        self.on_any(self.metrics.handle)
        self.queries["metrics_port"] = lambda arg: self.port
        self._server = self._server_thread = None
        self.port = None

    def _own(self):
        up = (time.time_ns() - self._started_ns) / 1e9 if self._started_ns else 0.0
        return self.instance, up, dict(self.counters), dict(self.bus_gaps)

    def setup(self):
        try:
            self._server, self._server_thread = start_http_server(
                self.conf.port, addr=self.conf.bind, registry=self.registry)
        except OSError as e:
            raise NodeStartError(f"metrics.port: cannot listen on {self.conf.bind}:{self.conf.port}: {e}") from None
        self.port = self._server.server_address[1]
        self.log.info("serving /metrics on http://%s:%d/metrics", self.conf.bind, self.port)

    def teardown(self):
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server_thread.join(1.0)
            self._server = None
            self.log.info("http server closed")

    def extra_counters(self) -> dict:
        return {"metrics_events": self.metrics.counts["events"]}
