"""Peer systems TreeScale is compared against: Redis, NATS, Mosquitto and raw ZeroMQ.

Each peer is used the way its client library documents for throughput, configured to
buffer rather than drop (see :mod:`bench.harness` for the loss policy).  All traffic
stays on 127.0.0.1.  Worker functions are staticmethods so spawned processes can
import them by qualified name.  Each broker peer names the ``program`` it starts and the
``debian_package`` that installs it (:mod:`bench.peer_programs` finds, installs or names
the missing ones).

Where peers lose messages *by design* with their default settings (all overridden here;
the shapes then run loss-free, and any remaining loss is reported, not hidden):

* Redis pub/sub: ``client-output-buffer-limit pubsub 32mb 8mb 60`` disconnects a slow
  subscriber.  Hits ``large`` (measured: 102/2000 delivered).  Worse, redis-py's PubSub
  reconnects and resubscribes silently, so the subscriber sees a gap, not an error.
* Mosquitto: QoS 0 messages to an *online* client count against ``max_queued_messages``
  (default 1000) and are dropped beyond it.  Hits ``small`` (measured: 162k/300k) and
  ``fanout``.
* NATS: the server cuts a slow consumer at ``max_pending`` (64MB) or ``write_deadline``;
  nats-py drops (SlowConsumerError) beyond 512k msgs / 128MB pending per subscription.
  Did not trigger on this machine with defaults, but would for a slower subscriber.
* ZeroMQ PUB/SUB: drops at SNDHWM/RCVHWM (default 1000 messages).  PUSH blocks instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import nats
import paho.mqtt.client as mqtt
import redis
import zmq

from bench.harness import (
    HOST,
    POLL_S,
    REQUEST_TIMEOUT_S,
    START_TIMEOUT_S,
    WORKER_BUDGET_S,
    BaseSystem,
    Deadline,
    RoundTrips,
    System,
    Tally,
    batches,
    broker,
    command_version,
    payload,
    receive_loop,
    shape_of,
    split_hostport,
    wait_done,
)

REQREP_SIZE = 100

# --------------------------------------------------------------------------- Redis


def _redis_subscribe(address: str, channel: str) -> tuple[redis.Redis, Any]:
    """Connect and subscribe; return once Redis confirmed the subscription (it is live)."""
    host, port = split_hostport(address)
    r = redis.Redis(host=host, port=port)
    ps = r.pubsub()
    ps.subscribe(channel)
    ack = ps.get_message(timeout=START_TIMEOUT_S)
    if not ack or ack["type"] != "subscribe":
        raise TimeoutError(f"redis did not confirm SUBSCRIBE {channel}: {ack!r}")
    return r, ps


class RedisSystem(BaseSystem):
    """Redis pub/sub via redis-py: pipelined PUBLISH, ``get_message`` loop on the subscriber.

    The server runs with ``client-output-buffer-limit pubsub 0 0 0`` so a slow subscriber is
    buffered instead of disconnected (the default 32mb/8mb-60s limit drops it).
    Request/reply is two channels (``<subject>.req`` / ``<subject>.rep``).
    """

    name = "redis"
    program = debian_package = "redis-server"

    def version(self) -> str:
        return command_version(["redis-server", "--version"])

    def server(self) -> AbstractContextManager[str]:
        def argv(port: int, workdir: Path) -> list[str]:
            return ["redis-server", "--bind", HOST, "--port", str(port), "--dir", str(workdir),
                    "--save", "", "--appendonly", "no", "--protected-mode", "no",
                    "--daemonize", "no", "--client-output-buffer-limit", "pubsub 0 0 0"]
        return broker("redis", argv)

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        host, port = split_hostport(address)
        r = redis.Redis(host=host, port=port)
        body = payload(size)
        try:
            pipe = r.pipeline(transaction=False)
            for n in batches(count, size):
                for _ in range(n):
                    pipe.publish(subject, body)
                pipe.execute()
        finally:
            r.close()

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        tally = Tally(count, timeout)
        r, ps = _redis_subscribe(address, subject)
        ready_evt.set()

        def recv(t: float) -> int | None:
            msg = ps.get_message(ignore_subscribe_messages=True, timeout=t)
            return None if msg is None else len(msg["data"])

        try:
            result_queue.put(receive_loop(tally, recv))
        finally:
            ps.close()
            r.close()

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        r, ps = _redis_subscribe(address, subject + ".req")
        ready_evt.set()
        deadline = Deadline(WORKER_BUDGET_S)
        try:
            while not stop_evt.is_set() and not deadline.expired():
                msg = ps.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if msg is not None:
                    r.publish(subject + ".rep", msg["data"])
        finally:
            ps.close()
            r.close()

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        r, ps = _redis_subscribe(address, subject + ".rep")
        body, trips = payload(REQREP_SIZE), RoundTrips(count)
        try:
            for _ in trips:
                t0 = trips.start()
                r.publish(subject + ".req", body)
                if ps.get_message(ignore_subscribe_messages=True, timeout=REQUEST_TIMEOUT_S) is None:
                    raise TimeoutError("redis reply timed out")
                trips.stop(t0)
            result_queue.put(trips.report())
        finally:
            ps.close()
            r.close()


# --------------------------------------------------------------------------- NATS

NATS_CONF = """\
# 1 MiB payloads need more than the 1MB default.
max_payload: 8MB
# Per-connection bytes the server buffers for a slow consumer before cutting it off
# (default 64MB): the large shape can have GBs in flight to a Python subscriber.
max_pending: 4GB
write_deadline: "30s"
"""


async def _nats_connect(address: str, errors: list[str] | None = None) -> Any:
    async def on_error(exc: Exception) -> None:
        if errors is not None:
            errors.append(f"{type(exc).__name__}: {exc}")

    return await nats.connect(servers=[f"nats://{address}"], allow_reconnect=False,
                              connect_timeout=START_TIMEOUT_S, error_cb=on_error)


async def _nats_wait_done(done: asyncio.Event, tally: Tally) -> None:
    while not done.is_set() and not tally.done:
        try:
            await asyncio.wait_for(done.wait(), POLL_S)
        except TimeoutError:
            pass


class NatsSystem(BaseSystem):
    """NATS core pub/sub via nats-py (asyncio).

    Publishing follows the nats-py docs: ``publish`` in a loop (the client buffers and its
    flusher task writes), ``flush`` at the end.  Subscribers use a callback with
    ``pending_msgs_limit=0`` / ``pending_bytes_limit=0`` (unlimited) so the client never
    drops as a slow consumer; the server gets ``max_pending: 4GB`` for the same reason.
    Request/reply uses ``nc.request`` (muxed inbox) and ``msg.respond``.
    """

    name = "nats"
    program = debian_package = "nats-server"

    def version(self) -> str:
        return command_version(["nats-server", "--version"])

    def server(self) -> AbstractContextManager[str]:
        def argv(port: int, workdir: Path) -> list[str]:
            conf = workdir / "nats.conf"
            conf.write_text(NATS_CONF)
            return ["nats-server", "-c", str(conf), "-a", HOST, "-p", str(port)]
        return broker("nats", argv)

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        async def main() -> None:
            nc = await _nats_connect(address)
            body = payload(size)
            try:
                for n in batches(count, size):
                    for _ in range(n):
                        await nc.publish(subject, body)
                await nc.flush(timeout=int(WORKER_BUDGET_S))
            finally:
                await nc.close()

        asyncio.run(main())

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        async def main() -> dict[str, Any]:
            tally, done, errors = Tally(count, timeout), asyncio.Event(), []
            nc = await _nats_connect(address, errors)

            async def on_msg(msg: Any) -> None:
                if not tally.add(len(msg.data)):
                    done.set()

            try:
                await nc.subscribe(subject, cb=on_msg, pending_msgs_limit=0, pending_bytes_limit=0)
                await nc.flush(timeout=int(START_TIMEOUT_S))  # server has processed SUB
                ready_evt.set()
                await _nats_wait_done(done, tally)
                return {**tally.report(), "errors": errors[:5]}
            finally:
                await nc.close()

        result_queue.put(asyncio.run(main()))

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        async def main() -> None:
            nc = await _nats_connect(address)

            async def on_req(msg: Any) -> None:
                await msg.respond(msg.data)

            try:
                await nc.subscribe(subject, cb=on_req)
                await nc.flush(timeout=int(START_TIMEOUT_S))
                ready_evt.set()
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, stop_evt.wait, WORKER_BUDGET_S)
            finally:
                await nc.close()

        asyncio.run(main())

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        async def main() -> dict[str, Any]:
            nc = await _nats_connect(address)
            body, trips = payload(REQREP_SIZE), RoundTrips(count)
            try:
                for _ in trips:
                    t0 = trips.start()
                    await nc.request(subject, body, timeout=REQUEST_TIMEOUT_S)
                    trips.stop(t0)
                return trips.report()
            finally:
                await nc.close()

        result_queue.put(asyncio.run(main()))


# --------------------------------------------------------------------------- MQTT

MOSQUITTO_CONF = """\
listener {port} {host}
allow_anonymous true
persistence false
# QoS 0 deliveries to an online client count against max_queued_messages (default
# 1000) and are silently dropped beyond it; 0 means unlimited, i.e. buffer.
max_queued_messages 0
# Redis, NATS and ZeroMQ all disable Nagle; do the same for a fair latency comparison.
set_tcp_nodelay true
log_dest stderr
log_type error
log_type warning
"""


def _mqtt_connect(address: str, topic: str | None = None, on_message: Any = None) -> mqtt.Client:
    """Connect with paho's network thread (``loop_start``); if ``topic`` is given return only
    after the SUBACK, i.e. once the subscription is live."""
    host, port = split_hostport(address)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    live = threading.Event()

    def on_connect(c: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            return
        if topic is None:
            live.set()
        else:
            c.subscribe(topic, qos=0)

    client.on_connect = on_connect
    client.on_subscribe = lambda *_args: live.set()
    if on_message is not None:
        client.on_message = on_message
    client.connect(host, port, keepalive=60)
    client.loop_start()
    if not live.wait(START_TIMEOUT_S):
        _mqtt_close(client)
        raise TimeoutError(f"mosquitto did not ack connect/subscribe on {address}")
    return client


def _mqtt_close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


class MqttSystem(BaseSystem):
    """Mosquitto via paho-mqtt 2.x (CallbackAPIVersion.VERSION2), QoS 0, MQTT 3.1.1.

    The network loop runs in paho's thread (``loop_start``), as its docs recommend for
    publishing from application code.  The publisher waits for the last message of each
    ~4 MiB batch to be written, which bounds paho's unbounded outgoing queue.
    Request/reply is two topics (``<subject>.req`` / ``<subject>.rep``).
    """

    name = "mqtt"
    program = debian_package = "mosquitto"

    def version(self) -> str:
        return command_version(["mosquitto", "-h"])

    def server(self) -> AbstractContextManager[str]:
        def argv(port: int, workdir: Path) -> list[str]:
            conf = workdir / "mosquitto.conf"
            conf.write_text(MOSQUITTO_CONF.format(port=port, host=HOST))
            return ["mosquitto", "-c", str(conf)]
        return broker("mosquitto", argv)

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        client = _mqtt_connect(address)
        body, deadline = payload(size), Deadline(WORKER_BUDGET_S)
        try:
            for n in batches(count, size, deadline):
                for _ in range(n):
                    info = client.publish(subject, body, qos=0)
                info.wait_for_publish(deadline.remaining())
        finally:
            _mqtt_close(client)

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        tally, done = Tally(count, timeout), threading.Event()

        def on_message(_c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
            if not tally.add(len(msg.payload)):
                done.set()

        client = _mqtt_connect(address, subject, on_message)
        try:
            ready_evt.set()
            wait_done(done, tally)
            result_queue.put(tally.report())
        finally:
            _mqtt_close(client)

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        def on_message(c: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
            c.publish(subject + ".rep", msg.payload, qos=0)

        client = _mqtt_connect(address, subject + ".req", on_message)
        try:
            ready_evt.set()
            stop_evt.wait(WORKER_BUDGET_S)
        finally:
            _mqtt_close(client)

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        got = threading.Event()
        client = _mqtt_connect(address, subject + ".rep", lambda *_args: got.set())
        body, trips = payload(REQREP_SIZE), RoundTrips(count)
        try:
            for _ in trips:
                got.clear()
                t0 = trips.start()
                client.publish(subject + ".req", body, qos=0)
                if not got.wait(REQUEST_TIMEOUT_S):
                    raise TimeoutError("mqtt reply timed out")
                trips.stop(t0)
            result_queue.put(trips.report())
        finally:
            _mqtt_close(client)


# --------------------------------------------------------------------------- raw ZeroMQ


#: Zero-copy sends only pay off for big frames (pyzmq's own copy_threshold is 64 KiB; below
#: it copy=False still allocates a Frame and measured ~0.6x slower for 100 B).
ZMQ_ZERO_COPY_MIN = 64 * 1024


def _zmq_topic(subject: str) -> bytes:
    return subject.encode() + b" "


def _zmq_split(address: str) -> tuple[str, Path]:
    base, _, rendezvous = address.partition("?rendezvous=")
    return base, Path(rendezvous)


def _zmq_bind(sock: zmq.Socket, address: str, subject: str) -> None:
    """Bind an ephemeral 127.0.0.1 port and publish the endpoint in the rendezvous dir
    (written then renamed, so readers never see a partial file)."""
    base, rendezvous = _zmq_split(address)
    sock.bind(f"{base}:*")
    folder = rendezvous / subject
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{os.getpid()}"
    tmp.write_text(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    tmp.rename(folder / str(os.getpid()))


def _zmq_peers(address: str, subject: str) -> list[str]:
    folder = _zmq_split(address)[1] / subject
    return [p.read_text() for p in sorted(folder.iterdir()) if not p.name.startswith(".")]


def _zmq_wait_subscriptions(sock: zmq.Socket, expected: int, deadline: Deadline) -> None:
    """XPUB_VERBOSE delivers one subscribe frame per SUB peer: once all arrived, every
    subscription is live and nothing sent afterwards is dropped for lack of a subscriber."""
    seen = 0
    while seen < expected:
        if not sock.poll(int(min(POLL_S, deadline.remaining()) * 1000)):
            if deadline.expired():
                raise TimeoutError(f"only {seen}/{expected} zmq subscriptions arrived")
            continue
        if sock.recv()[:1] == b"\x01":
            seen += 1


class ZmqSystem(BaseSystem):
    """Raw pyzmq with no broker: the ceiling for a Python client over TCP.

    * small / large: PUSH -> PULL (PUSH blocks at the HWM, so no loss); 1 MiB frames are
      sent and received with ``copy=False``, 100 B frames are copied (cheaper).
    * fanout: PUB/SUB filtered by subject (single ``"<subject> " + body`` frame) with HWM 0
      on both sides, because a PUB silently drops for slow subscribers at the default
      HWM of 1000.  The publisher (XPUB, verbose) waits for every SUB's subscription.
    * reqrep: REQ/REP.

    There is no broker to rendezvous at, so the "address" is
    ``tcp://127.0.0.1?rendezvous=<dir>``: receivers bind ephemeral ports and drop their
    endpoint in ``<dir>/<subject>/``; senders connect to every endpoint listed there.  The
    worker signatures carry no shape, so the socket pattern comes from ``shape_of(subject)``.
    """

    name = "zmq"
    ceiling = True

    def version(self) -> str:
        return f"pyzmq {zmq.__version__} / libzmq {zmq.zmq_version()}"

    @contextmanager
    def server(self) -> Iterator[str]:
        with TemporaryDirectory(prefix="bench-zmq-") as tmp:
            yield f"tcp://{HOST}?rendezvous={tmp}"

    @staticmethod
    def publisher(address: str, subject: str, count: int, size: int) -> None:
        ctx, deadline = zmq.Context(), Deadline(WORKER_BUDGET_S)
        fanout, copy = shape_of(subject) == "fanout", size < ZMQ_ZERO_COPY_MIN
        # PUB/SUB matches on the frame prefix: one "<subject> <body>" frame per message.
        body = _zmq_topic(subject) + payload(size) if fanout else payload(size)
        peers = _zmq_peers(address, subject)
        sock = ctx.socket(zmq.XPUB if fanout else zmq.PUSH)
        try:
            if fanout:
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)
                sock.sndhwm = 0
            for endpoint in peers:
                sock.connect(endpoint)
            if fanout:
                _zmq_wait_subscriptions(sock, len(peers), deadline)
            for n in batches(count, size, deadline):
                for _ in range(n):
                    sock.send(body, copy=copy)
        finally:
            sock.close(linger=int(deadline.remaining() * 1000))
            ctx.term()

    @staticmethod
    def subscriber(address: str, subject: str, count: int, ready_evt: MpEvent,
                   result_queue: Any, timeout: float) -> None:
        ctx, tally = zmq.Context(), Tally(count, timeout)
        fanout, copy = shape_of(subject) == "fanout", shape_of(subject) != "large"
        sock = ctx.socket(zmq.SUB if fanout else zmq.PULL)
        header = 0
        if fanout:
            sock.rcvhwm = 0
            sock.subscribe(_zmq_topic(subject))
            header = len(_zmq_topic(subject))

        def recv(t: float) -> int | None:
            try:
                msg = sock.recv(zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                if not sock.poll(int(t * 1000)):
                    return None
                msg = sock.recv(copy=copy)
            return len(msg) - header

        try:
            _zmq_bind(sock, address, subject)
            ready_evt.set()
            result_queue.put(receive_loop(tally, recv))
        finally:
            sock.close(linger=0)
            ctx.term()

    @staticmethod
    def responder(address: str, subject: str, ready_evt: MpEvent, stop_evt: MpEvent) -> None:
        ctx, deadline = zmq.Context(), Deadline(WORKER_BUDGET_S)
        sock = ctx.socket(zmq.REP)
        try:
            _zmq_bind(sock, address, subject)
            ready_evt.set()
            while not stop_evt.is_set() and not deadline.expired():
                if sock.poll(int(POLL_S * 1000)):
                    sock.send(sock.recv())
        finally:
            sock.close(linger=0)
            ctx.term()

    @staticmethod
    def requester(address: str, subject: str, count: int, result_queue: Any) -> None:
        ctx, body, trips = zmq.Context(), payload(REQREP_SIZE), RoundTrips(count)
        sock = ctx.socket(zmq.REQ)
        try:
            sock.connect(_zmq_peers(address, subject)[0])
            for _ in trips:
                t0 = trips.start()
                sock.send(body)
                if not sock.poll(int(REQUEST_TIMEOUT_S * 1000)):
                    raise TimeoutError("zmq reply timed out")
                sock.recv()
                trips.stop(t0)
            result_queue.put(trips.report())
        finally:
            sock.close(linger=0)
            ctx.term()


#: Name -> system; ``bench.run`` adds ``bench.treescale_system.SYSTEMS`` when importable.
REGISTRY: dict[str, System] = {
    s.name: s for s in (RedisSystem(), NatsSystem(), MqttSystem(), ZmqSystem())
}
