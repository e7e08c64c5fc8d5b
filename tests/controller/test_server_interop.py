"""`kvtier controller` with a real `kvtier server` reporting to it (the server's reporter): the
demo's chunks appear in the index, they come back after a controller restart (the server
registers again and full-syncs), and they leave with the server."""
import json
import os
import subprocess
import tempfile
import urllib.request

from testkit import free_port, free_port_triple


class Server:
    def __init__(self, kvtier_bin, tmp, controller_port):
        self.bin = kvtier_bin
        self.endpoint = f"ipc://{tmp}/kvtier.sock"
        self.admin_port = free_port()
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(
            [kvtier_bin, "--log-level", "warn", "server", "--endpoint", self.endpoint,
             "--admin-port", str(self.admin_port), "--server-id", "srv-interop",
             "--l1-size", "256MiB", "--controller", f"tcp://127.0.0.1:{controller_port}"],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("kvtier server ready"):
            self.proc.kill()
            self.log.seek(0)
            raise RuntimeError(f"server did not start: {line!r} {self.log.read()}")

    def reporter(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/api/status",
                                    timeout=10) as r:
            return json.loads(r.read())["reporter"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout=60)


def index_matches_server(controller, server):
    """The controller's keys once they equal the reporter's mirror (and the sync is done)."""
    rep = server.reporter()
    if rep["state"] != "registered":
        return None
    _, body = controller.http("/controller/workers")
    if body["total_count"] != 1:
        return None
    loc = body["workers"][0]["locations"][0]
    mirror = rep["locations"][0]
    if loc["sync"]["state"] != "complete" or loc["key_count"] != mirror["keys"]:
        return None
    if loc["last_seq"] != mirror["last_seq"] or mirror["keys"] == 0:
        return None
    return loc["key_count"]


def test_a_real_server_reports_to_the_controller_across_a_restart(controller_factory):
    kvtier_bin = os.environ["KVTIER_BIN"]
    base = free_port_triple()
    flags = ("--heartbeat-interval", "200ms", "--worker-timeout", "3s")
    controller = controller_factory(*flags, base_port=base)
    with tempfile.TemporaryDirectory(prefix="kvt-ctl-") as tmp:
        server = Server(kvtier_bin, tmp, base)
        try:
            demo = subprocess.run([kvtier_bin, "--log-level", "warn", "demo", "--endpoint",
                                   server.endpoint, "--turns", "2"],
                                  capture_output=True, text=True, timeout=300)
            assert demo.returncode == 0, demo.stderr
            keys = controller.wait_for(lambda: index_matches_server(controller, server),
                                       what="the index to match the server")
            _, body = controller.http("/controller/workers")
            worker = body["workers"][0]
            assert worker["instance_id"] == "srv-interop"
            assert worker["software_version"].startswith("kvtier ")

            # A restarted controller knows nothing; the server registers again and full-syncs.
            assert controller.stop() == 0
            controller = controller_factory(*flags, base_port=base)
            assert controller.wait_for(lambda: index_matches_server(controller, server),
                                       what="the re-sync") == keys
            _, dash = controller.http("/api/dashboard")
            kinds = {e["kind"] for e in dash["events"]}
            # The server may notice the restart from a heartbeat answered "reregister" (logged
            # as such) or register again before its next heartbeat: either way it registered
            # and full-synced with the new controller.
            assert {"registered", "sync_completed"} <= kinds, kinds

            # The server leaves with DEREGISTER.
            assert server.stop() == 0
            controller.wait_for(lambda: controller.http("/health")[1]["workers"] == 0,
                                what="the deregistration")
            assert controller.http("/health")[1]["keys"] == 0
        finally:
            server.stop()
