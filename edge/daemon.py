"""The till daemon: wires camera, vision, decisions, MQTT and the HTTP API, and supervises them.

Threads (each documented in its module):

- ``camera``   reads frames, keeps only the newest (capture.py)
- ``vision``   detect → zone → age → tracker (vision.py)
- ``http``     uvicorn's event loop; POS requests are served in its worker pool (api.py)
- ``publisher``, the one that hands stored alerts and summaries to MQTT (publisher.py);
  paho's network loop (mqtt.py); ``mqtt-pos``, the MQTT POS worker (pos_mqtt.py)
- ``models``   installs what arrives in incoming/ and follows the model store (model_store.py):
  an install may take long (a big archive, the self-test) and must never hold up the main loop
- the main thread: start-up, housekeeping once a second (idle transactions, stats, threads),
  shutdown; no exception from a housekeeping step ends it, so the till keeps answering and
  pinging. A thread that died is started again; the vision thread with a growing delay while it
  keeps dying soon after each start (:class:`RestartGate`), never in a tight loop

What the till reports (``/v1/status``, ``/metrics``, the stats event, systemd's status line) is
read in status.py. The console is not imported here: whoever starts the till (the CLI's ``run``)
hands in a factory for its routes (``console=``), so the daemon depends on the console only
through :class:`console.ConsoleHost`, which it satisfies.

Start-up fails fast with a clear message when the model, detector or HTTP port is unusable;
a camera or broker that is down at start-up is retried in the background instead, because
the till must keep answering the POS (``camera_unavailable``) while they come back.
"""

from __future__ import annotations

import logging
import resource
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

import cv2
import uvicorn

from .api import Mount, create_app, guarded_protocol
from .bundle import BundleError
from .capture import Camera, backoff_delay
from .config import ConfigError, Settings
from .decision import TransactionBook, decision_thresholds
from .events import Alert, Event, ModelRef, PosAnswer, PosMessage, Stats
from .history import open_history
from .loader import StartupError, StateDirUnusable, load_detector, load_model, open_model_store
from .mqtt import MqttTransport
from .notify import SystemdNotifier
from .outbox import Outbox, OutboxError
from .pos_mqtt import MqttPosListener
from .prometheus import Metrics
from .publisher import Publisher
from .status import StatusReporter, TillStatus, status_line
from .timing import StageTimer
from .tracker import Tracker
from .vision import VisionLoop
from .zone import ZoneStore

log = logging.getLogger(__name__)

CAMERA_READY_WAIT_S = 10.0
MODEL_SCAN_S = 2.0  # how often incoming/ and the model store are looked at
# Descriptors kept out of the HTTP server's reach: the outbox and history (SQLite, WAL, SHM),
# the camera, the broker, the model store's scans and installs, the journal.
FD_RESERVE = 128
HTTP_BACKLOG = 16
FAULT_LOG_EVERY_S = 60.0  # a housekeeping step that keeps failing is logged once a minute
# A vision thread that died is started again after VISION_RESTART_MIN_S, the delay doubling up to
# VISION_RESTART_MAX_S while it keeps dying within VISION_STABLE_S of its start.
VISION_RESTART_MIN_S = 1.0
VISION_RESTART_MAX_S = 60.0
VISION_STABLE_S = 60.0


def bind_http(settings: Settings) -> socket.socket:
    try:
        return socket.create_server((settings.http_host, settings.http_port), reuse_port=False)
    except OSError as exc:
        raise StartupError(
            f"AGEGATE_HTTP_PORT: cannot listen on {settings.http_host}:{settings.http_port}: {exc.strerror or exc}"
        ) from None


def http_connection_cap(wanted: int) -> int:
    """How many HTTP connections may be open at once: ``wanted``, within the descriptor limit.

    The soft RLIMIT_NOFILE is first raised to the hard one (systemd's default soft limit is
    1,024); then FD_RESERVE descriptors are kept for everything else the till opens, and of
    the rest the connections get half: the other half absorbs connections that asyncio has
    accepted (up to HTTP_BACKLOG a turn) before the cap closes them.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the descriptor limit from %d to %d: %s", soft, hard, exc)
    if soft == resource.RLIM_INFINITY:
        return wanted
    cap = min(wanted, (soft - FD_RESERVE) // 2)
    if cap < 4:
        log.warning("descriptor limit %d leaves no room for HTTP connections beside a reserve of %d; "
                    "allowing 4 (raise LimitNOFILE=)", soft, FD_RESERVE)
        return 4
    if cap < wanted:
        log.warning("AGEGATE_HTTP_MAX_CONNECTIONS=%d lowered to %d by the descriptor limit %d (LimitNOFILE=)",
                    wanted, cap, soft)
    return cap


def open_outbox(settings: Settings) -> Outbox | None:
    """The durable outbox, or None (events then go out live only) when the state directory is unusable."""
    try:
        return Outbox(settings.state_dir, max_events=settings.outbox_max_events)
    except OutboxError as exc:
        log.error("%s; alerts will be published live but not kept across broker outages or restarts", exc)
        return None


class RestartGate:
    """When a thread that died may be started again.

    A thread that dies on every start (a camera library that raises, a model that breaks the
    loop) must not be restarted in a tight loop: each start costs a thread, a log line and CPU
    the POS answers need. After a death the next start waits ``min_s``, doubling up to ``max_s``
    for each death that follows within ``stable_s`` of its start; a thread that ran longer than
    that counts as healthy again and waits ``min_s``.
    """

    def __init__(self, min_s: float, max_s: float, stable_s: float):
        self.min_s, self.max_s, self.stable_s = min_s, max_s, stable_s
        self.started_at = time.monotonic()
        self.quick_deaths = 0  # deaths in a row, each within stable_s of its start
        self.restarts = 0
        self.next_start: float | None = None  # set while the thread is dead

    def died(self, now: float) -> float:
        """Record a death seen at ``now``; the delay before the next start."""
        self.quick_deaths = self.quick_deaths + 1 if now - self.started_at < self.stable_s else 1
        delay = backoff_delay(self.quick_deaths, self.min_s, self.max_s)
        self.next_start = now + delay
        return delay

    def due(self, now: float) -> bool:
        return self.next_start is not None and now >= self.next_start

    def started(self, now: float) -> None:
        self.started_at, self.next_start = now, None
        self.restarts += 1


class Daemon:
    def __init__(self, settings: Settings, console: Callable[[Daemon], Mount] | None = None):
        """``console``: makes the console's routes for this daemon (console.create_console; the CLI's
        ``run`` passes it); without it the till serves the POS API alone."""
        self.settings = s = settings
        self.started_at = time.monotonic()
        try:
            self.store = open_model_store(s)
        except StateDirUnusable as exc:
            log.error("%s; model delivery is off", exc)
            self.store = None
        self.model = load_model(s, self.store)
        self.last_model_rejection: str | None = None
        # The store's rejection already on record at start: only later ones are news to announce.
        self._announced_rejection = self.store.status().get("last_rejected") if self.store else None
        log.info("model %s %s (%s) loaded from %s", self.model.manifest.name, self.model.manifest.version,
                 self.model.manifest.variant, self.model.bundle.path)
        if s.opencv_threads:  # process-wide; before the detector exists
            cv2.setNumThreads(s.opencv_threads)
        self.detector = load_detector(s)
        self._http_socket = bind_http(s)
        # Stages timed outside the vision loop (whose own timers are frames, detect, crop, infer).
        self.timers = {name: StageTimer() for name in ("capture", "decide", "publish")}
        self.camera = Camera(s.camera, loop_file=s.camera_loop, stall_timeout_s=s.camera_stall_timeout_s,
                             on_read=self.timers["capture"].add, max_fps=s.detect_fps)
        self.tracker = Tracker(window_s=s.smoothing_window_s, max_samples=s.smoothing_samples,
                               min_hits=s.face_min_frames)
        self.zones = ZoneStore(s.state_dir, default=s.zone)  # zone.json saved from the console wins
        self.model_lock = threading.Lock()  # the vision loop and the console's photo upload share the model
        self.report = StatusReporter(self)
        self.metrics = Metrics(self.status)
        self.vision = self._new_vision()
        self.vision_restarts = RestartGate(VISION_RESTART_MIN_S, VISION_RESTART_MAX_S, VISION_STABLE_S)
        self.thresholds = decision_thresholds(s, self.model.manifest)
        self.outbox = open_outbox(s)  # before the book: it keeps the open transactions too
        self.book = TransactionBook(
            store_id=s.store_id,
            till_id=s.till_id,
            thresholds=self.thresholds,
            vision=self.vision,
            model_ref=self.model_ref,
            publish=self.publish,
            on_decision=self.on_decision,
            face_wait_s=s.face_wait_s,
            max_spread=s.max_spread,
            timed=self._decision_took,
            store=self.outbox,
        )
        self.history = open_history(s.state_dir, s.history_days)
        # Decision → publisher → transport, one way; the MQTT POS adapter shares the transport.
        self.mqtt = MqttTransport(s)
        self.publisher = Publisher(s, self.mqtt, outbox=self.outbox, model_ref=self.model_ref,
                                   camera_state=lambda: self.camera.state.value, online_fields=self.online_fields)
        self.pos_mqtt = MqttPosListener(self.mqtt, f"{s.topic_base}/pos", on_pos=self.book.handle,
                                        on_rejected=self.reject, max_body=s.http_max_body)
        self.app = create_app(handle_pos=self.handle_pos, status=self.status, on_reject=self.reject,
                              max_body=s.http_max_body, mounts=[console(self)] if console else [],
                              token=s.http_token.get_secret_value() if s.http_token else None)
        protocol = guarded_protocol(http_connection_cap(s.http_max_connections), s.http_request_timeout_s)
        # log_config=None: uvicorn's messages go through our handler (journald priorities, JSON), not its own.
        # backlog is also how many connections asyncio accepts in one turn of its loop, before any
        # protocol (and so the connection cap) sees them: a big one lets a flood use up descriptors.
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", log_config=None, lifespan="off", http=protocol,
                                                     access_log=False, timeout_graceful_shutdown=2, backlog=HTTP_BACKLOG,
                                                     timeout_keep_alive=min(5, int(s.http_request_timeout_s) or 1)))
        self._http_thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._http_socket]},
                                             name="http", daemon=True)
        self.notifier = SystemdNotifier.from_env()
        self._stop = threading.Event()
        self._faults: dict[str, float] = {}  # housekeeping step -> when its failure was last logged
        self._models_thread = self._new_models_thread()

    # --- what other parts call ---------------------------------------------------------------------

    def model_ref(self) -> ModelRef:
        return ModelRef(**self.model.identity)

    def publish(self, event: Event) -> None:
        """Every event the daemon emits passes here: counted, logged when an alert, and handed to
        the publisher, which keeps alerts and summaries in the durable outbox until the broker
        acknowledges them."""
        if isinstance(event, Alert):
            self.report.count("alerts")
            self.metrics.alerts.labels(event.type).inc()
            log.warning("alert %s for transaction %s: %s", event.type, event.transaction_id, event.reason)
        started = time.perf_counter()
        self.publisher.publish(event)
        self.timers["publish"].add(time.perf_counter() - started)

    def on_decision(self, answer: PosAnswer) -> None:
        """Every new decision on a restricted item, clear included: metrics and the console's history."""
        self.metrics.decisions.labels(answer.decision).inc()
        if self.history is not None:
            self.history.record_answer(answer)

    def new_detector(self):
        """A detector of its own for a part other than the vision loop (detectors are not thread-safe)."""
        return load_detector(self.settings)

    def _new_vision(self) -> VisionLoop:
        return VisionLoop(self.camera, self.detector, lambda: self.model, self.tracker, lambda: self.zones.current,
                          face_stale_s=self.settings.face_stale_s, observe=self.metrics.stage_observers(),
                          model_lock=self.model_lock, estimate_fps=self.settings.estimate_fps)

    def _decision_took(self, seconds: float) -> None:
        self.timers["decide"].add(seconds)
        self.metrics.decision_seconds.observe(seconds)

    def reject(self, reason: str) -> None:
        self.report.count("pos_rejected")
        self.metrics.pos_rejected.inc()
        log.warning("%s", reason)

    def handle_pos(self, message: PosMessage) -> PosAnswer:
        """The HTTP POS answer: the book's, saying so when its alert has no durable copy."""
        answer = self.book.handle(message)
        if answer.alert_event_id is not None and not self.publisher.durable(str(answer.alert_event_id)):
            answer = answer.model_copy(update={"durable": False})
        return answer

    def online_fields(self) -> dict[str, Any]:
        """What an ``online`` status says besides the publisher's own fields: what the till decides
        with, the model's recorded validation figures that justify it, and the last model refused."""
        return {"thresholds": self.thresholds, "model_validation": self.model.manifest.validation,
                "last_model_rejection": self.last_model_rejection}

    def status(self) -> TillStatus:
        return self.report.status()

    def stats(self, interval_s: float) -> Stats:
        return self.report.stats(interval_s)

    # --- life cycle ----------------------------------------------------------------------------------

    def start(self) -> None:
        self.camera.start()
        self.vision.start()
        # Sales a kill interrupted are ended (their events wait in the outbox for the broker)
        # before either POS channel can start new ones under the same ids.
        if ended := self.book.end_interrupted():
            log.warning("ended %d transaction(s) left open by the last run (ended_by restart)", ended)
        self.publisher.start()
        self.pos_mqtt.start()
        self.mqtt.start()
        self._http_thread.start()
        self._models_thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                raise StartupError(f"AGEGATE_HTTP_PORT: the HTTP server on {self.settings.http_host}:"
                                   f"{self.settings.http_port} did not start")
            time.sleep(0.02)
        log.info("serving the POS API on http://%s:%d", self.settings.http_host, self.settings.http_port)
        # READY once the model is loaded and the camera delivers; a camera still missing after
        # CAMERA_READY_WAIT_S does not hold start-up back: the POS must get camera_unavailable.
        first = self.camera.latest(timeout=CAMERA_READY_WAIT_S)
        if first is None:
            log.warning("camera %s not streaming yet (%s); serving anyway", self.settings.camera, self.camera.last_error)
        self.notifier.ready(self.status_line())

    def status_line(self) -> str:
        """systemd's STATUS= line (status.status_line)."""
        return status_line(self.status())

    def run(self) -> None:
        """Housekeeping until stop(): idle transactions, stats, thread health, watchdog.

        The systemd watchdog is pinged here, after the housekeeping, so a main loop that
        hangs (a stuck lock, a wedged outbox) stops the pings and systemd restarts us.
        """
        next_stats = time.monotonic() + self.settings.stats_interval_s
        last_stats = time.monotonic()
        interval = self.notifier.watchdog_interval_s
        tick = min(1.0, interval / 2) if interval else 1.0
        shown = ""
        while not self._stop.wait(tick):
            self._guarded("idle transactions", self.book.expire_idle)
            self.notifier.ping_if_due(time.monotonic())
            if (line := self._guarded("status line", self.status_line)) and line != shown:
                self.notifier.status(line)
                shown = line
            self._guarded("threads", self._revive_threads)
            now = time.monotonic()
            if now >= next_stats:
                self._guarded("stats", lambda: self.publish(self.stats(now - last_stats)))
                last_stats, next_stats = now, now + self.settings.stats_interval_s

    def _guarded(self, step: str, fn):
        """Run one housekeeping step; an exception is logged (once a minute per step) and survived:
        the main loop is what answers systemd's watchdog and must outlive any one failure."""
        try:
            return fn()
        except Exception as exc:
            now = time.monotonic()
            if now - self._faults.get(step, -FAULT_LOG_EVERY_S) >= FAULT_LOG_EVERY_S:
                self._faults[step] = now
                log.error("housekeeping step %r failed (%s: %s); the daemon carries on", step,
                          type(exc).__name__, exc, exc_info=True)
            return None

    def _revive_threads(self) -> None:
        gate = self.vision_restarts
        if not self.vision.alive and not self._stop.is_set():
            now = time.monotonic()
            if gate.next_start is None:  # a death not seen before
                delay = gate.died(now)
                log.critical("the vision thread died (%s) after %.0f s; restarting it in %.0f s (%d death(s) in a row "
                             "within %.0f s of a start)", self.vision.death or "no reason recorded",
                             now - gate.started_at, delay, gate.quick_deaths, gate.stable_s)
            if gate.due(now):
                self.vision = self._new_vision()
                self.book.vision = self.vision
                self.vision.start()
                gate.started(now)
                log.warning("vision thread restarted (restart %d since start-up)", gate.restarts)
        if not self._models_thread.is_alive() and not self._stop.is_set():
            log.critical("the model thread died; restarting it")
            self._models_thread = self._new_models_thread()
            self._models_thread.start()

    def _new_models_thread(self) -> threading.Thread:
        return threading.Thread(target=self._follow_models, name="models", daemon=True)

    def _follow_models(self) -> None:
        """The ``models`` thread: incoming/ and the store every MODEL_SCAN_S, off the main loop."""
        while True:
            self._guarded("model store", self.follow_model_store)
            if self._stop.wait(MODEL_SCAN_S):
                return

    def follow_model_store(self) -> None:
        """Install what arrived in incoming/, announce the store's new rejections (those of
        ``agegate-edge model install`` too), and swap to the store's active model when it changed."""
        if self.store is None:
            return
        for name, outcome in self.store.scan_incoming(cancel=self._stop):
            log.info("incoming model %s: %s", name, outcome)
        rejected = self.store.status().get("last_rejected")
        if rejected and rejected != self._announced_rejection:
            self._announced_rejection = rejected
            self.last_model_rejection = f"{rejected['source']}: rejected: {rejected['reason']}"
            self.publisher.publish_status()
        active = self.store.active_dir()
        # No installed model active (none yet, or rolled back past the first install): the set-up bundle.
        target = active or self.settings.bundle_dir
        if Path(target).resolve() == Path(self.model.bundle.path).resolve():
            return
        try:
            new = self.store.check(active) if active else load_model(self.settings, self.store)
        except (BundleError, StartupError) as exc:
            self.last_model_rejection = f"{target.name}: {exc}"
            log.error("cannot switch to model %s: %s; keeping %s", target, exc, self.model.manifest.name)
            self.publisher.publish_status()
            return
        with self.model_lock:  # the vision loop finishes its current face with the old model
            old, self.model = self.model, new
            self.tracker.clear()  # estimates by the old model must not be reported as the new one's
            # A calibrated threshold belongs to its model.
            self.thresholds = self.book.thresholds = decision_thresholds(self.settings, new.manifest)
        # An expected event (an install or rollback someone asked for): INFO; failures above are errors.
        log.info("model swapped: %s %s -> %s %s (sha256 %s…)", old.manifest.name, old.manifest.version,
                 new.manifest.name, new.manifest.version, new.manifest.sha256[:12])
        self.publisher.publish_status()

    def request_stop(self) -> None:
        self._stop.set()

    def stop(self) -> None:
        """Stop taking POS messages, close open transactions, say ``stopped``, release the camera."""
        self._stop.set()
        self.notifier.stopping("stopping: closing transactions and flushing the outbox")
        self._server.should_exit = True
        self._http_thread.join(5)
        if self._models_thread.is_alive():  # an install in progress stops at its next step (cancel)
            self._models_thread.join(5)
        self.book.close_all("shutdown")
        self.publisher.stop()  # flushes what it can, says ``stopped``, disconnects the transport
        self.pos_mqtt.stop()
        self.vision.stop()
        self.camera.stop()
        if self.outbox is not None:
            self.outbox.close()
        if self.history is not None:
            self.history.close()
        self._http_socket.close()
        self.notifier.close()
        log.info("stopped")

__all__ = ["ConfigError", "Daemon", "StartupError"]
