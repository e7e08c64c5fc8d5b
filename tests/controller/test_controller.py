"""`kvtier controller` as a process: the HTTP admin API, the dashboard (rendered in headless
Chromium), and the wire protocol spoken by an independent Python worker (ctlwire.py)."""
import html
import os
import re
import shutil
import subprocess
import tempfile

import pytest

import ctlwire

MODEL = "meta-llama/Llama-3.1-8B"


def tokens(n, seed=1):
    return [(seed * 7919 + i * 31) % 50000 for i in range(n)]


def wait_keys(controller, n):
    controller.wait_for(lambda: controller.http("/health")[1]["keys"] == n, what=f"{n} keys")


def test_ready_health_and_graceful_sigterm(controller):
    status, health = controller.http("/health")
    assert status == 200
    assert health["status"] == "ok"
    assert int(health["controller_epoch"], 16) == controller.epoch
    assert health["workers"] == 0
    assert controller.stop() == 0


def test_workers_registered_over_the_wire_are_listed(controller):
    a = controller.worker("node-a", address="tcp://10.0.0.1:5600", locations=("L1", "fs"))
    b = controller.worker("node-b", worker_id=3)
    reply = a.register()
    assert reply["controller_epoch"] == controller.epoch
    assert reply["registration_id"] != 0
    b.register()
    a.admit([ctlwire.key_group(MODEL, ctlwire.token_hashes(tokens(512)))])
    wait_keys(controller, 2)

    status, body = controller.http("/controller/workers")
    assert status == 200 and body["total_count"] == 2
    first = body["workers"][0]
    assert (first["instance_id"], first["worker_id"], first["address"]) == \
        ("node-a", 0, "tcp://10.0.0.1:5600")
    assert first["key_count"] == 2
    assert [loc["location"] for loc in first["locations"]] == ["L1", "fs"]
    assert first["locations"][0]["last_seq"] == 1
    assert body["workers"][1]["worker_id"] == 3

    assert controller.http("/controller/workers?instance_id=node-b")[1]["total_count"] == 1
    status, one = controller.http("/controller/workers?instance_id=node-b&worker_id=3")
    assert status == 200 and one["worker_id"] == 3
    assert controller.http("/controller/workers?instance_id=nope")[0] == 404
    status, info = controller.http("/query_worker_info?instance_id=node-a&worker_id=0")
    assert status == 200 and info["software_version"] == "ctlwire test worker"
    assert controller.http("/query_worker_info?instance_id=node-a&worker_id=1")[0] == 404
    assert controller.http("/query_worker_info?instance_id=node-a")[0] == 400
    # The wire's WORKERS agrees.
    assert [w["instance_id"] for w in a.workers()] == ["node-a", "node-b"]


def test_lookup_by_token_ids_and_by_hashes(controller):
    a = controller.worker("node-a", address="tcp://a:5600")
    b = controller.worker("node-b", address="tcp://b:5600")
    a.register()
    b.register()
    prompt = tokens(3 * 256 + 100)
    hashes = ctlwire.token_hashes(prompt)
    assert len(hashes) == 3
    a.admit([ctlwire.key_group(MODEL, hashes)])
    b.admit([ctlwire.key_group(MODEL, hashes[:1])])
    wait_keys(controller, 3)

    status, body = controller.http("/lookup", "POST", {"model": MODEL, "token_ids": prompt})
    assert status == 200, body
    assert body["num_chunks"] == 3 and body["num_tokens"] == len(prompt)
    assert body["chunk_size"] == 256
    assert [(m["instance_id"], m["matched_chunks"], m["matched_tokens"], m["address"])
            for m in body["matches"]] == [("node-a", 3, 768, "tcp://a:5600"),
                                         ("node-b", 1, 256, "tcp://b:5600")]
    status, body = controller.http("/lookup", "POST", {
        "model": MODEL, "chunk_hashes": [h.hex() for h in hashes], "exclude_instance": "node-a"})
    assert status == 200 and [m["instance_id"] for m in body["matches"]] == ["node-b"]
    # Another rank, salt or model finds nothing.
    for other in ({"rank": 0, "world_size": 2}, {"cache_salt": "tenant"}, {"model": "other"}):
        status, body = controller.http("/lookup", "POST",
                                       {"model": MODEL, "token_ids": prompt, **other})
        assert status == 200 and body["matches"] == [], other
    # The wire's LOOKUP agrees.
    matches = a.lookup(MODEL, hashes)
    assert [(m["instance_id"], m["matched_chunks"]) for m in matches] == \
        [("node-a", 3), ("node-b", 1)]


def test_lookup_without_rank_credits_instances_holding_every_rank(controller):
    a = controller.worker("node-a")
    a.register()
    hashes = ctlwire.token_hashes(tokens(4 * 256))
    a.admit([ctlwire.key_group(MODEL, hashes, world_size=2, rank=0),
             ctlwire.key_group(MODEL, hashes[:2], world_size=2, rank=1)])
    wait_keys(controller, 6)
    _, body = controller.http("/lookup", "POST", {
        "model": MODEL, "world_size": 2, "chunk_hashes": [h.hex() for h in hashes]})
    assert [(m["instance_id"], m["matched_chunks"]) for m in body["matches"]] == [("node-a", 2)]
    _, body = controller.http("/lookup", "POST", {
        "model": MODEL, "world_size": 2, "rank": 0, "chunk_hashes": [h.hex() for h in hashes]})
    assert body["matches"][0]["matched_chunks"] == 4


@pytest.mark.parametrize("body, fragment", [
    ("{not json", "not valid JSON"),
    ("[]", "JSON object"),
    ({"token_ids": [1]}, "'model' is required"),
    ({"model": MODEL}, "exactly one of"),
    ({"model": MODEL, "chunk_hashes": ["zz"]}, "chunk_hashes[0]"),
    ({"model": MODEL, "token_ids": [-1]}, "token_ids[0]"),
    ({"model": MODEL, "token_ids": ["7"]}, "token_ids[0]"),
    ({"model": MODEL, "world_size": 2, "rank": 5, "token_ids": []}, "'rank'"),
    ({"model": MODEL, "tokens": []}, "unknown field 'tokens'"),
])
def test_bad_lookup_input_is_a_400_and_harms_nothing(controller, body, fragment):
    w = controller.worker("node-a")
    w.register()
    hashes = ctlwire.token_hashes(tokens(256))
    w.admit([ctlwire.key_group(MODEL, hashes)])
    wait_keys(controller, 1)
    status, error = controller.http("/lookup", "POST", body)
    assert status == 400
    assert fragment in error["error"], error
    assert error["code"] == 1 and error["retryable"] is False
    assert controller.http("/health")[0] == 200
    _, ok = controller.http("/lookup", "POST", {"model": MODEL, "chunk_hashes": [hashes[0].hex()]})
    assert ok["matches"][0]["matched_chunks"] == 1


def test_wrong_routes_methods_and_hostile_frames(controller):
    assert controller.http("/nowhere")[0] == 404
    status, body = controller.http("/health", "POST", {})
    assert status == 405 and "allowed: GET" in body["error"]
    assert controller.http("/lookup")[0] == 405
    # Garbage on the request socket gets an error reply; the controller serves on.
    w = controller.worker("node-a")
    w.req.send(b"GET / HTTP/1.1\r\n\r\n")
    flags, msg_type, request_id, reply = ctlwire.parse(w.req.recv())
    assert flags & ctlwire.FLAG_ERROR and reply["code"] == 800
    w.push.send_multipart([b"\x00garbage", b""])
    assert w.register()["registration_id"] != 0
    assert w.call(ctlwire.PING, {})["controller_epoch"] == controller.epoch
    with pytest.raises(ctlwire.ControllerError) as e:
        w.call(ctlwire.PING, {}, heartbeat=True)
    assert e.value.code == 800
    _, metrics = controller.http("/metrics")
    assert 'kvtier_controller_events_dropped_total{reason="decode_error"} 2' in metrics


def test_sequence_gap_full_sync_and_metrics(controller):
    w = controller.worker("node-a")
    w.register()
    hashes = ctlwire.token_hashes(tokens(4 * 256))
    w.admit([ctlwire.key_group(MODEL, hashes[:1])])
    w.seq["L1"] += 1  # seq 2 "lost"
    w.admit([ctlwire.key_group(MODEL, hashes[1:2])])
    controller.wait_for(
        lambda: "kvtier_controller_seq_gaps_total 1" in controller.http("/metrics")[1],
        what="the gap")
    commands = w.heartbeat([("L1", 3, 2)])["commands"]
    assert commands == [{"command": "full_sync", "location": "L1", "reason": "seq_gap"}]
    assert w.heartbeat([("L1", 3, 2)])["commands"] == []

    # The full sync, with batch 1 missing at first.
    origin = {**w.origin(), "location": "L1", "sync_id": 5}
    w.push.send(ctlwire.frame(ctlwire.FULL_SYNC_START, {
        **origin, "base_seq": 3, "total_batches": 2, "total_keys": 4}))
    w.push.send(ctlwire.frame(ctlwire.FULL_SYNC_BATCH, {
        **origin, "batch_index": 0, "groups": [ctlwire.key_group(MODEL, hashes[:2])]}))
    w.push.send(ctlwire.frame(ctlwire.FULL_SYNC_END, {**origin, "total_keys": 4}))
    status = controller.wait_for(
        lambda: (lambda s: s if s["state"] == "missing" else None)(
            w.call(ctlwire.FULL_SYNC_STATUS, origin)), what="missing")
    assert status["missing_batches"] == [1]
    w.push.send(ctlwire.frame(ctlwire.FULL_SYNC_BATCH, {
        **origin, "batch_index": 1, "groups": [ctlwire.key_group(MODEL, hashes[2:])]}))
    w.push.send(ctlwire.frame(ctlwire.FULL_SYNC_END, {**origin, "total_keys": 4}))
    controller.wait_for(lambda: w.call(ctlwire.FULL_SYNC_STATUS, origin)["state"] == "complete",
                        what="complete")
    _, metrics = controller.http("/metrics")
    for line in ("kvtier_controller_full_syncs_started_total 1",
                 "kvtier_controller_full_syncs_completed_total 1",
                 "kvtier_controller_keys 4",
                 'kvtier_controller_messages_total{type="FULL_SYNC_BATCH"} 2',
                 'kvtier_controller_request_duration_seconds_count{type="HEARTBEAT"} 2'):
        assert line in metrics, line
    _, dash = controller.http("/api/dashboard")
    kinds = [e["kind"] for e in dash["events"]]
    assert {"registered", "seq_gap", "full_sync_requested", "sync_completed"} <= set(kinds)


def test_clear_forgets_keys_and_asks_for_a_full_sync(controller):
    w = controller.worker("node-a")
    w.register()
    w.admit([ctlwire.key_group(MODEL, ctlwire.token_hashes(tokens(2 * 256)))])
    wait_keys(controller, 2)
    status, body = controller.http("/clear", "POST", {"instance_id": "node-a"})
    assert status == 200 and body == {"cleared_keys": 2}
    assert controller.http("/health")[1]["keys"] == 0
    assert w.heartbeat()["commands"] == [
        {"command": "full_sync", "location": "L1", "reason": "cleared"}]
    assert controller.http("/clear", "POST", {"worker_id": 1})[0] == 400


def test_silent_worker_is_reaped(controller_factory):
    controller = controller_factory("--heartbeat-interval", "50ms", "--worker-timeout", "300ms")
    quiet = controller.worker("node-quiet")
    reply = quiet.register()
    assert reply["heartbeat_interval_ms"] == 50 and reply["worker_timeout_ms"] == 300
    controller.wait_for(lambda: controller.http("/health")[1]["workers"] == 0, what="the reap")
    _, metrics = controller.http("/metrics")
    assert "kvtier_controller_workers_reaped_total 1" in metrics
    _, dash = controller.http("/api/dashboard")
    assert any(e["kind"] == "reaped" and "node-quiet" in e["message"] for e in dash["events"])
    commands = quiet.heartbeat()["commands"]
    assert [(c["command"], c["reason"]) for c in commands] == \
        [("reregister", "unknown_registration")]


def test_config_file_and_print_config(controller_factory, tmp_path):
    if not os.environ.get("KVTIER_BIN"):
        pytest.skip("KVTIER_BIN is not set")
    config = tmp_path / "controller.yaml"
    config.write_text("heartbeat:\n  interval: 2s\n  worker_timeout: 7s\nhashing:\n"
                      "  chunk_size: 128\n")
    out = subprocess.run([os.environ["KVTIER_BIN"], "controller", "--config", str(config),
                          "--sync-timeout", "90s", "--print-config"],
                         capture_output=True, text=True, check=True).stdout
    assert "interval: 2s" in out and "worker_timeout: 7s" in out
    assert "chunk_size: 128" in out and "timeout: 90s" in out
    config.write_text("heartbeat:\n  intervall: 2s\n")
    bad = subprocess.run([os.environ["KVTIER_BIN"], "controller", "--config", str(config)],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "intervall" in bad.stderr
    # A worker hashing 128-token chunks is refused by this (256-token) controller: error 10.
    controller = controller_factory()
    w = controller.worker("node-a")
    with pytest.raises(ctlwire.ControllerError) as e:
        w.register(chunk_size=128)
    assert e.value.code == 10


def test_dashboard_lists_workers(controller):
    for name, n in (("node-<b>&co", 2), ("node-a", 3)):
        w = controller.worker(name, address=f"tcp://{n}.example:5600")
        w.register()
        w.admit([ctlwire.key_group(MODEL, ctlwire.token_hashes(tokens(n * 256, seed=n)))])
    wait_keys(controller, 5)
    status, page = controller.http("/")
    assert status == 200 and "<title>kvtier controller</title>" in page
    assert "node-\\u003cb\\u003e\\u0026co" in page  # embedded data cannot break the page

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it)")
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [chromium, "--headless", "--disable-gpu", "--no-sandbox", "--dump-dom",
             f"--user-data-dir={profile}", controller.admin + "/"],
            capture_output=True, text=True, timeout=120).stdout
    rows = re.findall(r'<tr class="worker-row" data-instance="([^"]*)"[^>]*>(.*?)</tr>', dom,
                      re.S)
    # Sorted by instance id ('<' sorts before 'a'); names rendered as text, never as markup.
    assert [html.unescape(r[0]) for r in rows] == ["node-<b>&co", "node-a"], dom[:3000]
    assert "node-&lt;b&gt;&amp;co</td>" in rows[0][1]
    assert "tcp://2.example:5600" in rows[0][1]
    assert '<td class="key-count">3</td>' in rows[1][1]
    assert re.search(r'<span id="worker-count">2</span>', dom)
    assert "registered" in dom  # the recent events table
