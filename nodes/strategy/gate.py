"""The strategy node's order gate: plain decision logic, no sockets.

Before an intent is sent the gate says whether it may go (``check`` -> None) or why not (a short
reason, counted by the node as ``suppressed_<reason>``):

* ``killswitch``: risk's kill switch is engaged (``risk.killswitch``): nothing is sent.
* ``halted``: risk's trading state is HALTED (``risk.state``): nothing is sent.
* ``reducing``: state REDUCING and the intent would not shrink this plugin's position.
* ``pending``: an order of this plugin in this product is still working (or its outcome unknown
  after a timeout), until it is final with all its fills seen (so the plugin's position is
  current) or ``pending_timeout`` passes.
* ``backoff``: a rejection (risk's or the venue's) or a timeout happened recently: the pause grows
  ``backoff, 2*backoff, 4*backoff ...`` up to ``max_backoff`` and resets on the next accepted order.
* ``cooldown``: less than ``cooldown`` since this plugin's last order in this product.

Time is the market-event clock the node passes in (``ts_event``, ns), so replays decide the same.
"""
from decimal import Decimal

FINAL = frozenset({"FILLED", "CANCELLED", "REJECTED"})
ACTIVE, REDUCING, HALTED = "ACTIVE", "REDUCING", "HALTED"


class Gate:
    def __init__(self, *, cooldown_ns: int, backoff_ns: int, max_backoff_ns: int, pending_timeout_ns: int):
        self.cooldown_ns = cooldown_ns
        self.backoff_ns = backoff_ns
        self.max_backoff_ns = max_backoff_ns
        self.pending_timeout_ns = pending_timeout_ns
        self.killswitch = False
        self.risk_state = ACTIVE
        self.pending: dict = {}      # (plugin, product) -> (client_order_id, since_ns)
        self.last_sent: dict = {}    # (plugin, product) -> ns
        self.backoff: dict = {}      # (plugin, product) -> (until_ns, level)
        self.expired_pending = 0

    # --- state from risk ------------------------------------------------------------------------------
    def set_killswitch(self, engaged: bool):
        self.killswitch = bool(engaged)

    def set_risk_state(self, state: str):
        self.risk_state = state

    @property
    def blocked(self) -> bool:
        return self.killswitch or self.risk_state == HALTED

    # --- decisions ------------------------------------------------------------------------------------
    def check(self, plugin: str, intent, now_ns: int, position: Decimal):
        """None if ``intent`` may be sent now, else the reason it may not."""
        if self.killswitch:
            return "killswitch"
        if self.risk_state == HALTED:
            return "halted"
        if self.risk_state == REDUCING and not reduces(intent, position):
            return "reducing"
        key = (plugin, intent.product)
        p = self.pending.get(key)
        if p is not None:
            if now_ns - p[1] < self.pending_timeout_ns:
                return "pending"
            del self.pending[key]          # its outcome never arrived: stop waiting for it
            self.expired_pending += 1
        b = self.backoff.get(key)
        if b is not None and now_ns < b[0]:
            return "backoff"
        last = self.last_sent.get(key)
        if last is not None and now_ns - last < self.cooldown_ns:
            return "cooldown"
        return None

    def sent(self, plugin: str, intent, now_ns: int):
        key = (plugin, intent.product)
        self.last_sent[key] = now_ns
        self.pending[key] = (intent.client_order_id, now_ns)

    def accepted(self, plugin: str, intent):
        """Execution took the order: the backoff resets; it stays pending until ``order_done``."""
        self.backoff.pop((plugin, intent.product), None)

    def rejected(self, plugin: str, intent, now_ns: int, *, outcome_known: bool = True) -> int:
        """A rejection (or a timeout: ``outcome_known=False`` keeps it pending). Returns the pause (ns)."""
        key = (plugin, intent.product)
        if outcome_known:
            self._clear(key, intent.client_order_id)
        level = self.backoff.get(key, (0, 0))[1] + 1
        pause = min(self.max_backoff_ns, self.backoff_ns * (1 << min(level - 1, 30)))
        self.backoff[key] = (now_ns + pause, level)
        return pause

    def order_done(self, plugin: str, product: str, client_order_id: str):
        """The order is final and its fills are in the position: the next one may go."""
        self._clear((plugin, product), client_order_id)

    def _clear(self, key, coid):
        p = self.pending.get(key)
        if p is not None and p[0] == coid:
            del self.pending[key]

    def is_pending(self, plugin: str, product: str) -> bool:
        return (plugin, product) in self.pending


def reduces(intent, position: Decimal) -> bool:
    """True if ``intent`` shrinks |position| without flipping it."""
    size = intent.size or Decimal(0)
    if position > 0:
        return intent.side == "SELL" and 0 < size <= position
    if position < 0:
        return intent.side == "BUY" and 0 < size <= -position
    return False
