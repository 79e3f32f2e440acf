"""Publish/subscribe through a real node process: patterns, modes, targets, replies."""

from __future__ import annotations

import threading

import pytest

from treescale import NoResponders
from treescale.routing import PatternError, TargetError


def take(client, n: int, timeout: float = 5.0) -> list:
    """Exactly the next ``n`` events (fails if fewer arrive in time)."""
    got = []
    for ev in client.events(timeout=timeout):
        got.append(ev)
        if len(got) == n:
            break
    assert len(got) == n, f"expected {n} events, got {len(got)}: {got[-3:]}"
    return got


def names_of(client, n: int, timeout: float = 5.0) -> list[str]:
    return [ev.name for ev in take(client, n, timeout)]


def nothing_more(client, timeout: float = 0.3) -> None:
    """No further event arrives (after a flush made every earlier one land)."""
    extra = client.next_event(timeout)
    assert extra is None, f"unexpected event {extra}"


def test_publish_reaches_subscriber_with_payload_and_source(node, clients):
    sub = clients(node.address, name="sub")
    sub.subscribe("orders.created")
    pub = clients(node.address, name="shop")
    pub.publish("orders.created", b"order-1", headers={"trace": "t1"})
    ev = sub.next_event(5)
    assert (ev.name, bytes(ev.data), ev.source) == ("orders.created", b"order-1", "shop")
    assert ev.headers == {"trace": "t1"}


def test_wildcards_follow_nats_semantics(node, clients):
    star = clients(node.address)
    star.subscribe("orders.*")
    rest = clients(node.address)
    rest.subscribe("orders.>")
    pub = clients(node.address)
    for name in ("orders", "orders.created", "orders.eu.created", "other.created"):
        pub.publish(name, b"x")
    pub.flush()
    assert names_of(star, 1) == ["orders.created"]
    assert names_of(rest, 2) == ["orders.created", "orders.eu.created"]
    nothing_more(star)
    nothing_more(rest)


def test_system_events_are_not_caught_by_leading_wildcard(node, clients):
    everything = clients(node.address)
    everything.subscribe(">")
    sys_watch = clients(node.address)
    sys_watch.subscribe("$sys.>")
    clients(node.address, name="newcomer")  # triggers $sys.client.connect
    ev = sys_watch.next_event(5)
    assert ev.name == "$sys.client.connect" and ev.json()["client"] == "newcomer"
    nothing_more(everything)


def test_many_events_arrive_in_order(node, clients):
    sub = clients(node.address)
    sub.subscribe("seq")
    pub = clients(node.address)
    for i in range(20_000):
        pub.publish("seq", str(i).encode())
    got = [int(bytes(ev.data)) for ev in take(sub, 20_000, timeout=10)]
    assert got == list(range(20_000))


def test_mixed_names_in_one_batch_are_split_per_subscriber(node, clients):
    a = clients(node.address)
    a.subscribe("a.*")
    b = clients(node.address)
    b.subscribe("b.*")
    pub = clients(node.address)
    for i in range(100):
        pub.publish("a.x" if i % 2 else "b.x", str(i).encode())
    assert [int(bytes(e.data)) for e in take(a, 50)] == list(range(1, 100, 2))
    assert [int(bytes(e.data)) for e in take(b, 50)] == list(range(0, 100, 2))


def test_mode_one_round_robins_within_each_queue(node, clients):
    workers = [clients(node.address, name=f"w{i}") for i in range(3)]
    for w in workers:
        w.subscribe("jobs.>", queue="workers")
    audit = clients(node.address, name="audit")
    audit.subscribe("jobs.>", queue="audit")
    watcher = clients(node.address, name="watcher")
    watcher.subscribe("jobs.>")
    pub = clients(node.address)
    for i in range(30):
        pub.publish("jobs.run", str(i).encode(), mode="one")
    pub.flush()
    per_worker = [len(names_of(w, 10)) for w in workers]
    assert per_worker == [10, 10, 10]
    assert len(names_of(audit, 30)) == 30  # a queue of one gets every `one` event
    assert len(names_of(watcher, 30)) == 30  # no queue: its own group
    for c in (*workers, audit, watcher):
        nothing_more(c)


def test_mode_all_reaches_queue_members_too(node, clients):
    a = clients(node.address)
    a.subscribe("news", queue="q")
    b = clients(node.address)
    b.subscribe("news", queue="q")
    pub = clients(node.address)
    pub.publish("news", b"x")
    assert names_of(a, 1) == names_of(b, 1) == ["news"]


def test_client_gets_each_event_once_even_with_overlapping_subscriptions(node, clients):
    c = clients(node.address)
    c.subscribe("a.*")
    c.subscribe("a.>")
    c.subscribe("a.b")
    clients(node.address).publish("a.b", b"x")
    assert names_of(c, 1) == ["a.b"]
    nothing_more(c)


@pytest.mark.parametrize("target,expected", [
    ("node:n1", {"plain", "web", "eu", "chan"}),
    ("node:elsewhere", set()),
    ("group:web", {"web"}),
    ("group:backend", {"plain", "web", "eu", "chan"}),  # the node's own group
    ("tag:eu", {"plain", "web", "eu", "chan"}),  # the node's own tag
    ("tag:gpu", {"eu"}),
    ("channel:ops", {"chan"}),
])
def test_targets_narrow_delivery(node, clients, target, expected):
    subs = {
        "plain": clients(node.address, name="plain"),
        "web": clients(node.address, name="web", groups=["web"]),
        "eu": clients(node.address, name="eu", tags=["gpu"]),
        "chan": clients(node.address, name="chan", channels=["ops"]),
    }
    for c in subs.values():
        c.subscribe("deploy")
    pub = clients(node.address)
    pub.publish("deploy", b"v2", target=target)
    pub.flush()
    got = {label for label, c in subs.items() if c.next_event(0.5) is not None}
    assert got == expected


def test_unsubscribe_stops_delivery(node, clients):
    c = clients(node.address)
    c.subscribe("tick")
    pub = clients(node.address)
    pub.publish("tick", b"1")
    assert names_of(c, 1) == ["tick"]
    c.unsubscribe("tick")
    pub.publish("tick", b"2")
    pub.flush()
    nothing_more(c)


def test_request_reply_and_no_responders(node, clients):
    responder = clients(node.address, name="echo")
    responder.subscribe("svc.echo", queue="echo")

    def serve() -> None:
        for ev in responder.events(timeout=5):
            responder.reply(ev, b"echo:" + bytes(ev.data), headers={"by": "echo"})

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    requester = clients(node.address)
    replies = [requester.request("svc.echo", f"r{i}".encode(), timeout=5) for i in range(20)]
    assert [bytes(r.data) for r in replies] == [f"echo:r{i}".encode() for i in range(20)]
    assert replies[0].headers == {"by": "echo"} and replies[0].source == "echo"
    with pytest.raises(NoResponders, match="no subscriber for request 'svc.missing'"):
        requester.request("svc.missing", b"", timeout=5)


def test_request_times_out_when_responder_stays_silent(node, clients):
    silent = clients(node.address)
    silent.subscribe("svc.silent")
    with pytest.raises(TimeoutError, match="no answer within 0.3s"):
        clients(node.address).request("svc.silent", b"", timeout=0.3)


def test_large_payloads_round_trip_zero_copy_path(node, clients):
    sub = clients(node.address)
    sub.subscribe("blob.*")
    pub = clients(node.address)
    blobs = [bytes([i]) * (1 << 20) for i in range(5)]
    for i, blob in enumerate(blobs):
        pub.publish(f"blob.{i}", blob)
        pub.publish("blob.small", b"s")
    got = [(e.name, bytes(e.data)) for e in take(sub, 10, timeout=10)]
    expected = []
    for i, blob in enumerate(blobs):
        expected += [(f"blob.{i}", blob), ("blob.small", b"s")]
    assert got == expected


def test_invalid_pattern_is_refused_locally(node, clients):
    c = clients(node.address)
    with pytest.raises(PatternError, match="'>' must be the last token"):
        c.subscribe("a.>.b")
    with pytest.raises(PatternError, match="empty token"):
        c.subscribe("a..b")


def test_bad_event_name_gets_error_and_others_still_flow(node, clients):
    sub = clients(node.address)
    sub.subscribe("ok")
    pub = clients(node.address)
    pub.publish("bad.*.name", b"x")
    pub.publish("ok", b"y")
    pub.flush()
    assert names_of(sub, 1) == ["ok"]
    assert any(e.code == "bad_pattern" and "must not contain wildcards" in e.message
               for e in pub.errors)


def test_bad_target_is_refused_locally(node, clients):
    pub = clients(node.address)
    with pytest.raises(TargetError, match="'planet:mars' must be node:NAME"):
        pub.publish("x", b"", target="planet:mars")


def test_publish_fan_out_counts(node, clients):
    subs = [clients(node.address) for _ in range(5)]
    for s in subs:
        s.subscribe("fan")
    pub = clients(node.address)
    for i in range(1000):
        pub.publish("fan", b"%d" % i)
    for s in subs:
        assert [bytes(e.data) for e in take(s, 1000)] == [b"%d" % i for i in range(1000)]
        nothing_more(s, 0.1)


def test_handler_subscriptions_run_on_arrival_and_mix_with_events(node, clients):
    c = clients(node.address, name="svc")
    seen = []
    done = threading.Event()

    def on_job(ev) -> None:
        seen.append(bytes(ev.data))
        if len(seen) == 3:
            done.set()

    c.subscribe("jobs.*", handler=on_job)
    c.subscribe("news")  # a plain subscription keeps feeding events()
    c.subscribe("jobs.special")  # overlaps the handler's pattern: both see it
    pub = clients(node.address)
    for name, data in [("jobs.a", b"1"), ("news", b"n"), ("jobs.b", b"2"),
                       ("jobs.special", b"3")]:
        pub.publish(name, data)
    assert done.wait(5) and seen == [b"1", b"2", b"3"]
    assert [(e.name, bytes(e.data)) for e in take(c, 2)] == [("news", b"n"),
                                                             ("jobs.special", b"3")]
    nothing_more(c)


def test_handler_replies_and_survives_its_own_bugs(node, clients):
    svc = clients(node.address, name="echo")
    errors = []

    def handle(ev) -> None:
        if ev.data == b"boom":
            raise ValueError("handler bug")
        try:
            svc.flush()
        except RuntimeError as exc:
            errors.append(str(exc))
        svc.reply(ev, b"echo:" + bytes(ev.data))

    svc.subscribe("svc.echo", handler=handle)
    requester = clients(node.address)
    with pytest.raises(TimeoutError):
        requester.request("svc.echo", b"boom", timeout=0.5)
    assert bytes(requester.request("svc.echo", b"hi", timeout=5).data) == b"echo:hi"
    assert errors == ["flush cannot wait inside a subscription handler"]
