"""Delivery of alerts to Slack and Microsoft Teams, in a worker thread.

* Slack: an incoming-webhook URL (``SLACK_WEBHOOK_URL``: POST ``{"text", "blocks"}``, answer ``ok``),
  or a bot token + channel (``SLACK_BOT_TOKEN``/``SLACK_CHANNEL``: POST ``<slack_api_url>/chat.postMessage``
  with ``Authorization: Bearer``, answer ``{"ok": true}``).
* Teams: ``pymsteams`` to ``TEAMS_WEBHOOK_URL`` (an Office 365 ``MessageCard``).

Only HTTP 429, 5xx and connection errors are retried, with full-jitter exponential backoff (a
``Retry-After`` header is honoured, capped at ``backoff_max_s``); anything else is logged as a failure.
The worker never runs in the bus loop: ``Dispatcher.submit`` only appends to a bounded queue.
"""
import collections
import ipaddress
import logging
import random
import threading
import time
import urllib.parse

import pymsteams
import requests

COLORS = {"critical": "E81123", "warning": "FFB900", "info": "0078D7", "resolved": "107C10"}
EMOJI = {"critical": ":red_circle:", "warning": ":warning:", "info": ":information_source:",
         "resolved": ":white_check_mark:"}
RETRY_SLACK_ERRORS = frozenset({"ratelimited", "rate_limited", "internal_error", "fatal_error",
                                "service_unavailable", "request_timeout"})


class SendError(Exception):
    """A failed attempt. ``retry`` says whether it is worth another; ``after`` is a Retry-After."""

    def __init__(self, msg: str, retry: bool, after: float = None):
        super().__init__(msg)
        self.retry, self.after = retry, after


def _retry_after(resp) -> float:
    v = resp.headers.get("Retry-After") if resp is not None else None
    try:
        return max(0.0, float(v)) if v is not None else None
    except ValueError:
        return None


def _check_http(resp, what: str):
    if resp.status_code == 429 or resp.status_code >= 500:
        raise SendError(f"{what}: HTTP {resp.status_code}", True, _retry_after(resp))
    if not 200 <= resp.status_code < 300:
        raise SendError(f"{what}: HTTP {resp.status_code} {resp.text[:200]!r}", False)


def _stamp(ts_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts_ns / 1e9))


def slack_payload(alert, ts_ns: int, host: str = "") -> dict:
    """Slack message: a fallback ``text`` plus Block Kit ``blocks``."""
    sev = "resolved" if alert.resolved else alert.severity
    head = f"{'RESOLVED' if alert.resolved else alert.severity.upper()}: {alert.title}"
    context = f"key `{alert.key}` · {alert.severity} · {_stamp(ts_ns)}" + (f" · {host}" if host else "")
    return {
        "text": f"[tickmesh] {head} - {alert.text}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": f"{head}"[:150], "emoji": True}},
            {"type": "section", "text": {"type": "mrkdwn", "text": f"{EMOJI[sev]} {alert.text}"[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": context}]},
        ],
    }


def teams_card(alert, url: str, ts_ns: int, host: str = "", timeout: float = 5.0) -> pymsteams.connectorcard:
    """An Office 365 MessageCard built with pymsteams."""
    sev = "resolved" if alert.resolved else alert.severity
    card = pymsteams.connectorcard(url, http_timeout=timeout)
    card.payload["@type"] = "MessageCard"
    card.payload["@context"] = "https://schema.org/extensions"
    title = f"{'RESOLVED' if alert.resolved else alert.severity.upper()}: {alert.title}"
    card.title(f"tickmesh {title}")
    card.summary(title)
    card.text(alert.text)
    card.color(COLORS[sev])
    section = pymsteams.cardsection()
    section.addFact("key", alert.key)
    section.addFact("severity", alert.severity)
    section.addFact("time", _stamp(ts_ns))
    if host:
        section.addFact("host", host)
    card.addSection(section)
    return card


class SlackWebhook:
    name = "slack"

    def __init__(self, url: str, session: requests.Session, timeout: float):
        self.url, self.session, self.timeout = url, session, timeout

    def send(self, alert, ts_ns, host):
        try:
            r = self.session.post(self.url, json=slack_payload(alert, ts_ns, host), timeout=self.timeout)
        except requests.RequestException as e:
            raise SendError(f"slack webhook: {type(e).__name__}", True) from None
        _check_http(r, "slack webhook")


class SlackBot:
    name = "slack"

    def __init__(self, api_url: str, token: str, channel: str, session: requests.Session, timeout: float):
        self.url = api_url.rstrip("/") + "/chat.postMessage"
        self.token, self.channel, self.session, self.timeout = token, channel, session, timeout

    def send(self, alert, ts_ns, host):
        body = dict(slack_payload(alert, ts_ns, host), channel=self.channel)
        try:
            r = self.session.post(self.url, json=body, timeout=self.timeout,
                                  headers={"Authorization": f"Bearer {self.token}",
                                           "Content-Type": "application/json; charset=utf-8"})
        except requests.RequestException as e:
            raise SendError(f"slack chat.postMessage: {type(e).__name__}", True) from None
        _check_http(r, "slack chat.postMessage")
        try:
            data = r.json()
        except ValueError:
            raise SendError("slack chat.postMessage: answer is not JSON", False) from None
        if not data.get("ok"):
            err = str(data.get("error", "unknown"))
            raise SendError(f"slack chat.postMessage: {err}", err in RETRY_SLACK_ERRORS, _retry_after(r))


class TeamsWebhook:
    name = "teams"

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url, timeout

    def send(self, alert, ts_ns, host):
        card = teams_card(alert, self.url, ts_ns, host, self.timeout)
        try:
            card.send()
        except pymsteams.TeamsWebhookException:
            r = card.last_http_response
            _check_http(r, "teams webhook")
            raise SendError(f"teams webhook: HTTP {r.status_code}", False) from None
        except requests.RequestException as e:
            raise SendError(f"teams webhook: {type(e).__name__}", True) from None


def channels_from_secrets(secrets: dict, conf, session: requests.Session) -> list:
    """The configured channels (none: alerts only go to the log)."""
    def sec(name):
        s = secrets.get(name)
        return s.reveal() if s else ""
    out = []
    if sec("SLACK_WEBHOOK_URL"):
        out.append(SlackWebhook(sec("SLACK_WEBHOOK_URL"), session, conf.http_timeout_s))
    elif sec("SLACK_BOT_TOKEN") and sec("SLACK_CHANNEL"):
        out.append(SlackBot(conf.slack_api_url, sec("SLACK_BOT_TOKEN"), sec("SLACK_CHANNEL"), session,
                            conf.http_timeout_s))
    if sec("TEAMS_WEBHOOK_URL"):
        out.append(TeamsWebhook(sec("TEAMS_WEBHOOK_URL"), conf.http_timeout_s))
    return out


def _on_this_machine(url: str) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def channels_for_mode(channels: list, mode: str) -> tuple:
    """(channels to page, [(channel, why not)]) under ``alerts.mode``: ``live`` pages them all,
    ``local`` only those whose URL is on this machine (the tests' fake Slack/Teams), ``log`` none."""
    if mode == "live":
        return list(channels), []
    if mode == "log":
        return [], [(ch, "alerts go to the log only") for ch in channels]
    keep, refused = [], []
    for ch in channels:
        if _on_this_machine(ch.url):
            keep.append(ch)
        else:
            host = urllib.parse.urlsplit(ch.url).hostname or "a URL with no host"
            refused.append((ch, f"{host} is not this machine"))
    return keep, refused


class Dispatcher:
    """A worker thread that sends queued alerts to every channel with retries.

    ``done(alert, ts_ns, channels)`` is called from the worker with the channels that accepted it
    (the node hands it back to its loop with ``call_soon``)."""

    def __init__(self, channels: list, conf, log: logging.LoggerAdapter, done, host: str = ""):
        self.channels, self.conf, self.log, self.done, self.host = channels, conf, log, done, host
        self._q = collections.deque()
        self._cv = threading.Condition()
        self._stop = threading.Event()
        self._thread = None
        self.counts = {"sent": 0, "failed": 0, "retries": 0, "dropped": 0}

    def start(self):
        self._thread = threading.Thread(target=self._run, name="alerts-sender", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 0.5):
        self._stop.set()
        with self._cv:
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._q:
            self.log.warning("%d alert(s) not sent at stop", len(self._q))

    def submit(self, alert, ts_ns: int):
        """Non-blocking (bus loop)."""
        with self._cv:
            if len(self._q) >= self.conf.queue_max:
                old = self._q.popleft()
                self.counts["dropped"] += 1
                self.log.error("alert queue full: dropped %s", old[0].key)
            self._q.append((alert, ts_ns))
            self._cv.notify()

    def pending(self) -> int:
        return len(self._q)

    def _run(self):
        while not self._stop.is_set():
            with self._cv:
                while not self._q and not self._stop.is_set():
                    self._cv.wait(0.5)
                if self._stop.is_set():
                    return
                alert, ts_ns = self._q.popleft()
            ok = [ch.name for ch in self.channels if self._send(ch, alert, ts_ns)]
            try:
                self.done(alert, ts_ns, ok)
            except Exception:  # noqa: BLE001
                self.log.exception("alert completion callback failed")

    def _send(self, ch, alert, ts_ns) -> bool:
        c = self.conf
        for attempt in range(c.max_attempts):
            try:
                ch.send(alert, ts_ns, self.host)
                self.counts["sent"] += 1
                self.log.info("alert %s sent to %s%s", alert.key, ch.name,
                              f" after {attempt} retries" if attempt else "")
                return True
            except SendError as e:
                last = e
                if not e.retry or attempt + 1 >= c.max_attempts:
                    break
                cap = min(c.backoff_max_s, c.backoff_base_s * (2 ** attempt))
                delay = min(c.backoff_max_s, e.after) if e.after is not None else random.uniform(0, cap)
                self.counts["retries"] += 1
                self.log.warning("alert %s to %s: %s; retry %d in %.2f s", alert.key, ch.name, e,
                                 attempt + 1, delay)
                if self._stop.wait(delay):
                    break
            except Exception as e:  # noqa: BLE001 - a broken channel must not kill the worker
                last = SendError(f"{ch.name}: {type(e).__name__}: {e}", False)
                break
        self.counts["failed"] += 1
        self.log.error("alert %s NOT delivered to %s: %s", alert.key, ch.name, last)
        return False
