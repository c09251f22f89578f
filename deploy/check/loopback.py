#!/usr/bin/env python3
"""Runs the store's pods, as the rendered StatefulSet describes them, as real processes on loopback.

    loopback.py --binary PATH/trestle RENDERED.yaml          (as root: it needs a private mount namespace)

Each pod is the container's own start script (/bin/sh) with the pod's environment; only what Kubernetes would
provide is stood in for: pod N's network is the address 127.0.0.(10+N) (the script's 0.0.0.0 becomes that
address), cluster DNS is a hosts file that maps each pod's name in the headless Service to its address (bind-
mounted over /etc/hosts in a mount namespace of the pod's own), and the volume is a temporary directory. When the
overlay turns TLS on, openssl makes a CA and one certificate the way deploy/README.md asks cert-manager to (every
member's name by wildcard, 127.0.0.1, server and client use; plus the stand-in pod addresses, which etcdctl dials
here), in place of the Secret's files.

It then does what deploy/README.md tells an operator to do, with Debian's etcdctl:
  1. the founders form a cluster: every member ready (/readyz), a write and a read through each;
  2. a rolling update under write load: SIGTERM to each member, highest ordinal first, start it again and wait
     until it is ready before the next, while a writer puts keys; afterwards every acknowledged key is there;
  3. scaling up by one: `member add --learner`, the next ordinal's pod started (it joins), ready, `member promote`;
  4. scaling down again: `member remove`, its pod stopped; writes still succeed;
  5. with --replace-volume, a founder's volume replaced, with CLUSTER_STATE=existing: `member remove`, its pod
     stopped and its data deleted, `member add --learner` with the same peer URL, the pod started (it should
     join), `member promote`.
Exit status 0 when every step held. Not part of scripts/test.sh: it needs root and a built `trestle`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import manifests  # noqa: E402  (the checker: rendered objects, environment, start script)

NAMESPACE = "trestle-check"
TLS_MOUNT = "/etc/trestle/tls"
ETCDCTL_TLS: list[str] = []


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class Pods:
    def __init__(self, binary: str, docs: list[dict], work: pathlib.Path):
        self.sts = manifests.find(docs, "StatefulSet", "trestle-store")
        self.container = self.sts["spec"]["template"]["spec"]["containers"][0]
        self.service = self.sts["spec"]["serviceName"]
        self.script = self.container["command"][2].replace(manifests.STORE_BINARY, binary)
        self.work = work
        self.tls = manifests.env_value(self.container, "TRESTLE_CERT_FILE") is not None
        if self.tls:
            self.make_certificates(work / "tls")
        self.procs: dict[int, subprocess.Popen] = {}
        self.hosts = work / "hosts"
        self.hosts.write_text(
            "127.0.0.1 localhost\n"
            + "".join(f"{self.ip(i)} {self.name(i)}.{self.service}.{NAMESPACE}.svc\n" for i in range(10))
        )

    def name(self, i: int) -> str:
        return f"{self.sts['metadata']['name']}-{i}"

    @staticmethod
    def ip(i: int) -> str:
        return f"127.0.0.{10 + i}"

    def client(self, i: int) -> str:
        scheme = manifests.env_value(self.container, "CLIENT_SCHEME")
        return f"{scheme}://{self.ip(i)}:{manifests.port_number(self.container, 'client')}"

    def make_certificates(self, tls: pathlib.Path) -> None:
        tls.mkdir()
        ssl = ["openssl"]
        def run(*args: str) -> None:
            subprocess.run(ssl + list(args), cwd=tls, check=True, capture_output=True)
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
            "-subj", "/CN=trestle loopback CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=trestle-store")
        names = [f"DNS:*.{self.service}.{NAMESPACE}.svc", "IP:127.0.0.1"] + [f"IP:{self.ip(i)}" for i in range(10)]
        (tls / "ext.cnf").write_text(
            f"subjectAltName={','.join(names)}\nextendedKeyUsage=serverAuth,clientAuth\n"
            "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n")
        run("x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.crt", "-days", "1", "-extfile", "ext.cnf")
        ETCDCTL_TLS[:] = [f"--cacert={tls / 'ca.crt'}", f"--cert={tls / 'tls.crt'}", f"--key={tls / 'tls.key'}"]

    def start(self, i: int, **overrides: str) -> None:
        env = {"PATH": "/usr/bin:/bin", "POD_NAME": self.name(i), "POD_NAMESPACE": NAMESPACE}
        for e in manifests.env_list(self.container):
            if "value" in e:
                env[e["name"]] = e["value"].replace(TLS_MOUNT, str(self.work / "tls"))
        env.update(overrides)
        data = self.work / self.name(i)
        data.mkdir(exist_ok=True)
        script = self.script.replace("0.0.0.0", self.ip(i)).replace("/var/lib/trestle", str(data))
        wrapper = 'mount --bind "$HOSTS" /etc/hosts && exec /bin/sh -ec "$SCRIPT"'
        env.update(HOSTS=str(self.hosts), SCRIPT=script)
        logfile = open(self.work / f"{self.name(i)}.log", "ab")
        self.procs[i] = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-ec", wrapper],
            env=env, stdout=logfile, stderr=subprocess.STDOUT,
        )

    def stop(self, i: int, timeout: float = 60) -> float:
        proc = self.procs.pop(i)
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise SystemExit(f"{self.name(i)} did not stop within {timeout} s of SIGTERM")
        if proc.returncode != 0:
            raise SystemExit(f"{self.name(i)} exited with status {proc.returncode} after SIGTERM")
        return time.monotonic() - start

    def ready(self, i: int, timeout: float = 120) -> float:
        url = f"http://{self.ip(i)}:{manifests.port_number(self.container, 'metrics')}/readyz"
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if i in self.procs and self.procs[i].poll() is not None:
                raise SystemExit(f"{self.name(i)} exited with status {self.procs[i].returncode}; see its log")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.name(i)} not ready within {timeout} s")

    def stop_all(self) -> None:
        for i in list(self.procs):
            try:
                self.stop(i)
            except SystemExit as e:
                log(f"while cleaning up: {e}")


def etcdctl(endpoints: list[str], *args: str, timeout: float = 10) -> str:
    run = subprocess.run(
        ["etcdctl", "--endpoints", ",".join(endpoints), "--command-timeout=5s", *ETCDCTL_TLS, *args],
        env={**os.environ, "ETCDCTL_API": "3"}, capture_output=True, text=True, timeout=timeout,
    )
    if run.returncode != 0:
        raise RuntimeError(run.stderr.strip() or run.stdout.strip())
    return run.stdout


def status(endpoint: str) -> dict:
    """etcdctl endpoint status of one member: its id, the leader's id, the cluster id in its header."""
    import json
    # Scheme-less: etcdctl 3.4 sends a URL's scheme in the HTTP/2 :authority of this call, which the server rejects.
    reply = json.loads(etcdctl([endpoint.split("://", 1)[-1]], "endpoint", "status", "-w", "json"))[0]["Status"]
    return {"id": reply["header"]["member_id"], "leader": reply["leader"], "cluster": reply["header"]["cluster_id"]}


def member_id(endpoints: list[str], name: str) -> str:
    for line in etcdctl(endpoints, "member", "list").splitlines():
        fields = [f.strip() for f in line.split(",")]
        if fields[2] == name:
            return fields[0]
    raise SystemExit(f"{name} is not in the member list")


class Writer(threading.Thread):
    """Puts key-<n> in a loop through every member; remembers the keys whose put was acknowledged."""

    def __init__(self, endpoints: list[str]):
        super().__init__(daemon=True)
        self.endpoints = endpoints
        self.acked: list[str] = []
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        n = 0
        while not self.stopping.is_set():
            key = f"rolling/{n:06d}"
            n += 1
            try:
                etcdctl(self.endpoints, "put", key, "v")
                self.acked.append(key)
            except (RuntimeError, subprocess.TimeoutExpired):
                self.failed += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--keep", action="store_true", help="keep the data directories and logs")
    parser.add_argument("--replace-volume", action="store_true", help="also step 5")
    parser.add_argument("rendered")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: each pod gets a mount namespace with its own /etc/hosts")
    docs = manifests.load(args.rendered)
    work = pathlib.Path(tempfile.mkdtemp(prefix="trestle-loopback-"))
    pods = Pods(os.path.abspath(args.binary), docs, work)
    replicas = pods.sts["spec"]["replicas"]
    founders = list(range(replicas))
    log(f"{replicas} founders from {args.rendered}{' with TLS' if pods.tls else ''}; logs and data in {work}")
    try:
        # 1. The founders form a cluster.
        for i in founders:
            pods.start(i)
        for i in founders:
            log(f"{pods.name(i)} ready after {pods.ready(i):.1f} s")
        endpoints = [pods.client(i) for i in founders]
        for i in founders:
            etcdctl([pods.client(i)], "put", f"hello/{i}", pods.name(i))
            got = etcdctl([pods.client(i)], "get", "--print-value-only", f"hello/{i}").strip()
            assert got == pods.name(i), got
        members = etcdctl(endpoints, "member", "list")
        log("cluster formed; members:\n" + members.rstrip())
        assert len(members.strip().splitlines()) == replicas

        # 2. A rolling update, highest ordinal first, under writes.
        writer = Writer(endpoints)
        writer.start()
        time.sleep(1)
        for i in reversed(founders):
            st = status(pods.client(i))
            role = "the leader" if st["id"] == st["leader"] else "a follower"
            took = pods.stop(i)
            pods.start(i)
            log(f"rolled {pods.name(i)} ({role}): stopped {took * 1000:.0f} ms after SIGTERM, ready again after {pods.ready(i):.1f} s")
        time.sleep(1)
        writer.stopping.set()
        writer.join()
        missing = [k for k in writer.acked
                   if etcdctl(endpoints, "get", "--print-value-only", k).strip() != "v"]
        log(f"rolling update: {len(writer.acked)} puts acknowledged, {writer.failed} failed, {len(missing)} acknowledged puts missing")
        if missing:
            raise SystemExit(f"acknowledged writes lost: {missing[:10]}")

        # 3. Scale up by one: learner, join, catch up, promote.
        new = replicas
        peer = f"{manifests.env_value(pods.container, 'PEER_SCHEME')}://{pods.name(new)}.{pods.service}.{NAMESPACE}.svc:{manifests.port_number(pods.container, 'peer')}"
        log(etcdctl(endpoints, "member", "add", pods.name(new), "--learner", f"--peer-urls={peer}").splitlines()[0])
        pods.start(new)
        log(f"{pods.name(new)} (learner) ready after {pods.ready(new):.1f} s")
        learner = member_id(endpoints, pods.name(new))
        deadline = time.monotonic() + 60
        while True:
            try:
                log(etcdctl(endpoints, "member", "promote", learner).strip())
                break
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    raise SystemExit(f"promote failed: {e}")
                time.sleep(0.5)
        endpoints.append(pods.client(new))
        etcdctl([pods.client(new)], "put", "scaled", "up")
        clusters = {pods.name(i): status(pods.client(i))["cluster"] for i in founders + [new]}
        if len(set(clusters.values())) != 1:
            log(f"NOTE: the members report different cluster ids in their response headers: {clusters}")
        members = etcdctl(endpoints, "member", "list")
        log("after scale-up:\n" + members.rstrip())
        assert "true" not in [l.split(",")[-1].strip() for l in members.splitlines()], "a learner is left"

        # 4. Scale down: remove, then stop the pod.
        log(etcdctl(endpoints[:-1], "member", "remove", learner).strip())
        pods.stop(new)
        endpoints.pop()
        etcdctl(endpoints, "put", "scaled", "down")
        members = etcdctl(endpoints, "member", "list")
        assert len(members.strip().splitlines()) == replicas, members
        log("after scale-down:\n" + members.rstrip())

        if not args.replace_volume:
            log("all steps held")
            return 0

        # 5. Replace the highest founder's volume: remove it, wipe it, add it back as a learner, promote it.
        last = founders[-1]
        others = [pods.client(i) for i in founders if i != last]
        old_id = member_id(endpoints, pods.name(last))
        log(etcdctl(others, "member", "remove", old_id).strip())
        pods.stop(last)
        shutil.rmtree(work / pods.name(last))
        peer = f"{manifests.env_value(pods.container, 'PEER_SCHEME')}://{pods.name(last)}.{pods.service}.{NAMESPACE}.svc:{manifests.port_number(pods.container, 'peer')}"
        log(etcdctl(others, "member", "add", pods.name(last), "--learner", f"--peer-urls={peer}").splitlines()[0])
        pods.start(last, CLUSTER_STATE="existing")
        log(f"{pods.name(last)} (new volume, learner) ready after {pods.ready(last):.1f} s")
        deadline = time.monotonic() + 30
        while pods.name(last) not in [line.split(", ")[2] for line in etcdctl(others, "member", "list").splitlines()]:
            if time.monotonic() > deadline:
                raise SystemExit(f"{pods.name(last)} joined nobody within 30 s (its member stays unstarted):\n"
                                 + etcdctl(others, "member", "list").rstrip())
            time.sleep(0.5)
        learner = member_id(others, pods.name(last))
        deadline = time.monotonic() + 60
        while True:
            try:
                log(etcdctl(others, "member", "promote", learner).strip())
                break
            except RuntimeError as e:
                if time.monotonic() > deadline:
                    raise SystemExit(f"promote failed: {e}")
                time.sleep(0.5)
        for i in founders:
            got = etcdctl([pods.client(i)], "get", "--print-value-only", "scaled").strip()
            assert got == "down", f"{pods.name(i)} reads {got!r}"
        members = etcdctl(endpoints, "member", "list")
        assert len(members.strip().splitlines()) == replicas, members
        log("after replacing a founder's volume:\n" + members.rstrip())
        log("all steps held")
        return 0
    finally:
        pods.stop_all()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
