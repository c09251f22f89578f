#!/usr/bin/env python3
"""Cross-checks the rendered Kubernetes manifests of deploy/k8s: what no schema validator sees.

    manifests.py --repo ROOT OVERLAY=RENDERED.yaml...      check each overlay's rendered objects
    manifests.py --repo ROOT --self-test OVERLAY=RENDERED.yaml...
                                                            also plant faults and require each to be caught

Schema validation is kubernetes-validate's job (scripts/check-deploy.sh runs both). This checks that the objects
agree with each other and with the binary: selectors match labels, serviceName names a headless Service that
publishes not-ready members, probes and scrape annotations point at ports and paths that exist (paths looked up
in the crates' sources, flags in the `trestle serve` and `trestle cache serve` argument structs), the store's
founders match its replica ordinals, the PodDisruptionBudget keeps a quorum, every container is non-root with a
read-only root filesystem, no capabilities and resources, and no Secret is baked in. It runs the store's start
script with /bin/sh and a stand-in for `trestle`, for a founder and for a member joining later, and checks the
command line it would run.

It needs PyYAML (installed with kubernetes-validate). Exit status 1 and one line per problem on failure.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile

import yaml

# What each overlay must add on top of the bases.
EXPECT = {
    "dev": {"tls": False, "store_replicas": 3, "anti_affinity": False},
    "production": {"tls": True, "store_replicas": 5, "anti_affinity": True},
}
STORE_BINARY = "/usr/local/bin/trestle"
NAMESPACE = "trestle-check"
TLS_ENV = {
    "TRESTLE_CERT_FILE": "tls.crt",
    "TRESTLE_KEY_FILE": "tls.key",
    "TRESTLE_TRUSTED_CA_FILE": "ca.crt",
    "TRESTLE_PEER_CERT_FILE": "tls.crt",
    "TRESTLE_PEER_KEY_FILE": "tls.key",
    "TRESTLE_PEER_TRUSTED_CA_FILE": "ca.crt",
}
SECRETISH = re.compile(r"(PASSWORD|PASSWD|TOKEN|SECRET|PRIVATE|_KEY)$", re.IGNORECASE)


class Source:
    """What the binaries offer, read from the crates' sources."""

    def __init__(self, repo: pathlib.Path):
        self.repo = repo

    def _text(self, *globs: str) -> str:
        return "\n".join(
            p.read_text(encoding="utf-8") for g in globs for p in sorted(self.repo.glob(g)) if p.is_file()
        )

    def http_paths(self, which: str) -> set[str]:
        """String literals that look like HTTP routes in the sources of the store or the cache."""
        globs = {
            "store": ("crates/raft/src/**/*.rs", "crates/etcd/src/**/*.rs", "crates/trestle/src/**/*.rs"),
            "cache": ("crates/cache/src/**/*.rs",),
        }[which]
        return set(re.findall(r'"(/[a-z]+)"', self._text(*globs)))

    def flags(self, path: str, struct: str) -> set[str]:
        """The long flags of a clap argument struct: its `pub field:` names in kebab case."""
        text = (self.repo / path).read_text(encoding="utf-8")
        match = re.search(r"pub struct " + struct + r"\s*\{(.*?)\n\}", text, re.S)
        if not match:
            return set()
        return {"--" + f.replace("_", "-") for f in re.findall(r"pub (\w+):", match.group(1))}

    def env_vars(self, path: str) -> set[str]:
        return set(re.findall(r'env = "(TRESTLE_\w+)"', (self.repo / path).read_text(encoding="utf-8")))


def load(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def quantity_bytes(q: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}
    for suffix, factor in units.items():
        if str(q).endswith(suffix):
            return int(float(str(q)[: -len(suffix)]) * factor)
    return int(q)


def matches(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def env_list(container: dict) -> list[dict]:
    return container.get("env") or []


def env_value(container: dict, name: str):
    for e in env_list(container):
        if e["name"] == name:
            return e.get("value")
    return None


def port_number(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    return None


def url_port(value: str) -> int:
    return int(value.rsplit(":", 1)[1].split("/")[0])


class Checker:
    def __init__(self, source: Source):
        self.source = source
        self.errors: list[str] = []

    def fail(self, where: str, message: str) -> None:
        self.errors.append(f"{where}: {message}")

    # ---- every object ------------------------------------------------------------------------------------
    def check(self, overlay: str, docs: list[dict]) -> list[str]:
        self.errors = []
        self.overlay = overlay
        by_kind: dict[str, list[dict]] = {}
        for d in docs:
            by_kind.setdefault(d["kind"], []).append(d)
        for d in docs:
            where = f"{overlay} {d['kind']}/{d['metadata']['name']}"
            if d["kind"] == "Secret":
                self.fail(where, "a Secret is part of the manifests: secrets come from the cluster, never from here")
            if d["kind"] == "ConfigMap" and any(SECRETISH.search(k) for k in (d.get("data") or {})):
                self.fail(where, "a ConfigMap carries what looks like a secret")
        sets = by_kind.get("StatefulSet", []) + by_kind.get("Deployment", [])
        if not any(s["metadata"]["name"] == "trestle-store" for s in sets):
            self.fail(overlay, "no trestle-store StatefulSet rendered")
        if not any(s["metadata"]["name"] == "trestle-cache" for s in sets):
            self.fail(overlay, "no trestle-cache StatefulSet rendered")
        for s in sets:
            self.workload(s, by_kind)
        for pdb in by_kind.get("PodDisruptionBudget", []):
            self.pdb(pdb, sets)
        for np in by_kind.get("NetworkPolicy", []):
            self.network_policy(np, sets)
        for svc in by_kind.get("Service", []):
            where = f"{overlay} Service/{svc['metadata']['name']}"
            targets = [s for s in sets if matches(svc["spec"].get("selector") or {}, s["spec"]["template"]["metadata"]["labels"])]
            if not targets:
                self.fail(where, "its selector matches no workload's pods")
            for s in targets:
                c = s["spec"]["template"]["spec"]["containers"][0]
                for p in svc["spec"].get("ports") or []:
                    if port_number(c, p.get("targetPort", p["port"])) is None:
                        self.fail(where, f"targetPort {p.get('targetPort')} is not a port of {s['metadata']['name']}")
        return self.errors

    def workload(self, s: dict, by_kind: dict) -> None:
        name = s["metadata"]["name"]
        where = f"{self.overlay} {s['kind']}/{name}"
        spec = s["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels") or {}
        if not matches(spec["selector"].get("matchLabels") or {}, labels):
            self.fail(where, "selector does not match the pod template's labels")
        psc = pod.get("securityContext") or {}
        for c in pod.get("initContainers", []) + pod["containers"]:
            self.container(where, c, psc)
        annotations = spec["template"]["metadata"].get("annotations") or {}
        c = pod["containers"][0]
        metrics = port_number(c, "metrics")
        if annotations.get("prometheus.io/scrape") != "true":
            self.fail(where, "no prometheus.io/scrape annotation")
        if metrics is None or annotations.get("prometheus.io/port") != str(metrics):
            self.fail(where, f"prometheus.io/port {annotations.get('prometheus.io/port')} is not the metrics port {metrics}")
        if annotations.get("prometheus.io/path") != "/metrics":
            self.fail(where, "prometheus.io/path is not /metrics")
        if s["kind"] == "StatefulSet":
            svc = next((v for v in by_kind.get("Service", []) if v["metadata"]["name"] == spec.get("serviceName")), None)
            if svc is None:
                self.fail(where, f"serviceName {spec.get('serviceName')!r} names no Service")
            elif svc["spec"].get("clusterIP") != "None":
                self.fail(where, f"serviceName {svc['metadata']['name']} is not a headless Service")
            elif not matches(svc["spec"].get("selector") or {}, labels):
                self.fail(where, f"Service {svc['metadata']['name']} does not select these pods")
        if name == "trestle-store":
            self.store(s, svc, by_kind)
        elif name == "trestle-cache":
            self.cache(s)

    def container(self, where: str, c: dict, psc: dict) -> None:
        where = f"{where} container {c['name']}"
        sc = c.get("securityContext") or {}
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True):
            self.fail(where, "runAsNonRoot is not set")
        if sc.get("runAsUser", psc.get("runAsUser")) in (0, None):
            self.fail(where, "no non-zero runAsUser (runAsNonRoot cannot be checked against a named user)")
        if sc.get("readOnlyRootFilesystem") is not True:
            self.fail(where, "the root filesystem is not read-only")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.fail(where, "allowPrivilegeEscalation is not false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            self.fail(where, "capabilities are not all dropped")
        if (sc.get("capabilities") or {}).get("add"):
            self.fail(where, "capabilities are added")
        res = c.get("resources") or {}
        for kind, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
            for k in keys:
                if k not in (res.get(kind) or {}):
                    self.fail(where, f"no resources.{kind}.{k}")
        if not str(c.get("image", "")).startswith("trestle"):
            self.fail(where, f"image {c.get('image')!r} is not the trestle image")
        if str(c.get("image", "")).endswith(":latest") and self.overlay == "production":
            self.fail(where, "production runs an image tagged latest")
        defined: set[str] = set()
        for e in env_list(c):
            for ref in re.findall(r"\$\((\w+)\)", e.get("value") or ""):
                if ref not in defined:
                    self.fail(where, f"env {e['name']} refers to $({ref}), which is not defined before it (the kubelet leaves it as is)")
            if "value" in e and SECRETISH.search(e["name"]):
                self.fail(where, f"env {e['name']} has a literal value: take secrets from a Secret")
            defined.add(e["name"])
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = c.get(kind)
            if not probe:
                self.fail(where, f"no {kind}")
                continue
            http = probe.get("httpGet")
            if http and port_number(c, http["port"]) is None:
                self.fail(where, f"{kind} port {http['port']} is not a container port")
        lifecycle = json.dumps(c.get("lifecycle") or {})
        if "member" in lifecycle and "remove" in lifecycle:
            self.fail(where, "a lifecycle hook removes a member: scale-down is an explicit admin step")

    # ---- the store -----------------------------------------------------------------------------------------
    def store(self, s: dict, svc: dict | None, by_kind: dict) -> None:
        where = f"{self.overlay} StatefulSet/trestle-store"
        expect = EXPECT.get(self.overlay, {})
        spec = s["spec"]
        pod = spec["template"]["spec"]
        c = pod["containers"][0]
        replicas = spec.get("replicas", 1)
        if replicas < 3 or replicas % 2 == 0:
            self.fail(where, f"replicas {replicas}: a Raft cluster wants an odd number, at least 3")
        if "store_replicas" in expect and replicas != expect["store_replicas"]:
            self.fail(where, f"replicas {replicas}, expected {expect['store_replicas']} in {self.overlay}")
        if spec.get("podManagementPolicy") != "Parallel":
            self.fail(where, "podManagementPolicy is not Parallel (founders must start together)")
        if svc is not None and svc["spec"].get("publishNotReadyAddresses") is not True:
            self.fail(where, "the headless Service does not publish not-ready addresses: members could not find each other")
        if pod.get("terminationGracePeriodSeconds", 30) < 30:
            self.fail(where, "terminationGracePeriodSeconds below 30 s leaves no room for the hand-over and shutdown")
        if (c.get("lifecycle") or {}).get("preStop"):
            self.fail(where, "a preStop hook: SIGTERM already hands leadership over")
        paths = self.source.http_paths("store")
        for kind, path in (("startupProbe", "/livez"), ("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
            got = ((c.get(kind) or {}).get("httpGet") or {}).get("path")
            if got != path:
                self.fail(where, f"{kind} path {got}, expected {path}")
            if got and got not in paths:
                self.fail(where, f"{kind} path {got} is not served by trestle serve (no such route in crates/raft, etcd, trestle)")
        for k in ("/metrics",):
            if k not in paths:
                self.fail(where, f"{k} is not served by trestle serve")
        if env_value(c, "CLUSTER_STATE") != "new":
            self.fail(where, f"CLUSTER_STATE {env_value(c, 'CLUSTER_STATE')!r}: the manifests found a new cluster")
        founders = (env_value(c, "FOUNDERS") or "").split(",")
        expected = [f"{s['metadata']['name']}-{i}" for i in range(replicas)]
        if founders != expected:
            self.fail(where, f"FOUNDERS {founders} do not match the ordinals of {replicas} replicas: {expected}")
        claims = [t["metadata"]["name"] for t in spec.get("volumeClaimTemplates") or []]
        mounts = {m["name"]: m["mountPath"] for m in c.get("volumeMounts") or []}
        if "data" not in claims or mounts.get("data") != "/var/lib/trestle":
            self.fail(where, "no per-pod volume (volumeClaimTemplates data) mounted at /var/lib/trestle")
        anti = ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get("requiredDuringSchedulingIgnoredDuringExecution")
        if expect.get("anti_affinity") and not anti:
            self.fail(where, "no required pod anti-affinity between members")
        tls = expect.get("tls")
        for var in TLS_ENV:
            if tls and not env_value(c, var):
                self.fail(where, f"TLS expected but {var} is not set")
            if tls is False and env_value(c, var):
                self.fail(where, f"{var} set in an overlay without TLS")
        if tls:
            self.tls_files(where, pod, c)
        known_env = self.source.env_vars("crates/trestle/src/serve.rs")
        for e in env_list(c):
            if e["name"].startswith("TRESTLE_") and e["name"] not in known_env:
                self.fail(where, f"env {e['name']} is not an option of trestle serve")
        self.run_start_script(where, s, svc, c, replicas, tls)

    def tls_files(self, where: str, pod: dict, c: dict) -> None:
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for var, key in TLS_ENV.items():
            path = env_value(c, var) or ""
            mount = next((m for m in c.get("volumeMounts") or [] if path.startswith(m["mountPath"] + "/")), None)
            if mount is None:
                self.fail(where, f"{var}={path} is on no mounted volume")
                continue
            secret = (volumes.get(mount["name"]) or {}).get("secret")
            if not secret:
                self.fail(where, f"{var}={path} is not on a Secret volume")
                continue
            items = {i["path"]: i["key"] for i in secret.get("items") or []}
            rel = path[len(mount["mountPath"]) + 1 :]
            if items and items.get(rel) != key:
                self.fail(where, f"{var}={path} is not the Secret's {key}")
            if not mount.get("readOnly"):
                self.fail(where, f"the TLS volume {mount['name']} is not mounted read-only")

    def run_start_script(self, where: str, s: dict, svc: dict | None, c: dict, replicas: int, tls) -> None:
        """Runs the container's start script for founder 0 and for a member joining at ordinal `replicas`."""
        command = (c.get("command") or []) + (c.get("args") or [])
        if command[:2] != ["/bin/sh", "-ec"] or len(command) != 3:
            self.fail(where, f"the start command is not `/bin/sh -ec SCRIPT`: {command[:2]}")
            return
        script = command[2]
        if STORE_BINARY not in script:
            self.fail(where, f"the start script does not run {STORE_BINARY}")
            return
        service = svc["metadata"]["name"] if svc else "?"
        ports = {n: port_number(c, n) for n in ("client", "peer", "metrics")}
        serve_flags = self.source.flags("crates/trestle/src/serve.rs", "ServeArgs")
        with tempfile.TemporaryDirectory() as tmp:
            stub = pathlib.Path(tmp, "trestle")
            stub.write_text(f"#!{sys.executable}\nimport json, sys\nprint(json.dumps(sys.argv[1:]))\n")
            stub.chmod(0o755)
            # A founder while the cluster is new, the same founder's ordinal on an empty volume once the cluster
            # exists, and a member joining beyond the founders.
            for ordinal, cluster_state, founds in ((0, None, True), (0, "existing", False), (replicas, None, False)):
                pod_name = f"{s['metadata']['name']}-{ordinal}"
                env = {"PATH": "/usr/bin:/bin", "POD_NAME": pod_name, "POD_NAMESPACE": NAMESPACE}
                for e in env_list(c):
                    if "value" in e:
                        env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), e["value"])
                if cluster_state:
                    env["CLUSTER_STATE"] = cluster_state
                run = subprocess.run(
                    ["/bin/sh", "-ec", script.replace(STORE_BINARY, str(stub))],
                    env=env, capture_output=True, text=True, timeout=30,
                )
                if run.returncode != 0:
                    self.fail(where, f"the start script failed for {pod_name}: {run.stderr.strip()}")
                    continue
                argv = json.loads(run.stdout)
                self.serve_argv(f"{where} ({pod_name}, CLUSTER_STATE={env.get('CLUSTER_STATE')})", argv, pod_name,
                                ordinal < replicas, founds, replicas, service, ports, tls, serve_flags)

    def serve_argv(self, where, argv, pod_name, founder, founds, replicas, service, ports, tls, serve_flags) -> None:
        if argv[:1] != ["serve"]:
            self.fail(where, f"runs `trestle {' '.join(argv[:1])}`, not `trestle serve`")
            return
        flags: dict[str, str] = {}
        rest = argv[1:]
        while rest:
            flag = rest.pop(0)
            if "=" in flag:
                flag, value = flag.split("=", 1)
            else:
                value = rest.pop(0) if rest and not rest[0].startswith("--") else "true"
            if flag not in serve_flags:
                self.fail(where, f"{flag} is not an option of trestle serve")
            flags[flag] = value
        scheme = "https" if tls else "http"
        host = f"{pod_name}.{service}.{NAMESPACE}.svc"
        want = {
            "--name": pod_name,
            "--initial-advertise-peer-urls": f"{scheme}://{host}:{ports['peer']}",
            "--advertise-client-urls": f"{scheme}://{host}:{ports['client']}",
            "--initial-cluster-state": "new" if founds else "existing",
        }
        for flag, value in want.items():
            if flags.get(flag) != value:
                self.fail(where, f"{flag} is {flags.get(flag)!r}, expected {value!r}")
        for flag, port in (("--listen-client-urls", ports["client"]), ("--listen-peer-urls", ports["peer"]),
                           ("--listen-metrics-urls", ports["metrics"])):
            value = flags.get(flag, "")
            if not value or url_port(value) != port:
                self.fail(where, f"{flag} {value!r} does not listen on the container port {port}")
        if not flags.get("--listen-metrics-urls", "").startswith("http://"):
            self.fail(where, "the probes use plain HTTP, but --listen-metrics-urls is not http://")
        for flag in ("--listen-client-urls", "--listen-peer-urls"):
            if not flags.get(flag, "").startswith(f"{scheme}://"):
                self.fail(where, f"{flag} is not {scheme}://")
        members = [f"{pod_name.rsplit('-', 1)[0]}-{i}" for i in range(replicas)]
        if not founder:
            members.append(pod_name)
        cluster = [m.split("=", 1) for m in flags.get("--initial-cluster", "").split(",")]
        expected = [[m, f"{scheme}://{m}.{service}.{NAMESPACE}.svc:{ports['peer']}"] for m in members]
        if cluster != expected:
            self.fail(where, f"--initial-cluster {flags.get('--initial-cluster')!r} is not the members {members} at their peer URLs")
        if not flags.get("--data-dir", "").startswith("/var/lib/trestle/"):
            self.fail(where, "--data-dir is not on the data volume")

    # ---- the cache -----------------------------------------------------------------------------------------
    def cache(self, s: dict) -> None:
        where = f"{self.overlay} StatefulSet/trestle-cache"
        pod = s["spec"]["template"]["spec"]
        c = pod["containers"][0]
        labels = s["spec"]["template"]["metadata"]["labels"]
        zone = [t for t in pod.get("topologySpreadConstraints") or [] if t.get("topologyKey") == "topology.kubernetes.io/zone"]
        if not zone or not matches(zone[0].get("labelSelector", {}).get("matchLabels") or {}, labels):
            self.fail(where, "no topology spread across zones that selects these pods")
        args = c.get("args") or []
        if args[:2] != ["cache", "serve"]:
            self.fail(where, f"runs `trestle {' '.join(args[:2])}`, not `trestle cache serve`")
            return
        known = self.source.flags("crates/trestle/src/cache.rs", "CacheServeArgs")
        flags = {}
        for a in args[2:]:
            flag, _, value = a.partition("=")
            if flag not in known:
                self.fail(where, f"{flag} is not an option of trestle cache serve")
            flags[flag] = value
        for flag, port in (("--memcached-listen", "memcached"), ("--metrics-listen", "metrics")):
            value = flags.get(flag, "")
            if not value or int(value.rsplit(":", 1)[1]) != port_number(c, port):
                self.fail(where, f"{flag} {value!r} is not the container port {port}")
        limit = quantity_bytes(((c.get("resources") or {}).get("limits") or {}).get("memory", "0"))
        memory = int(flags.get("--memory", "0") or 0)
        if not 0 < memory < limit:
            self.fail(where, f"--memory {memory} must be positive and below the memory limit {limit}")
        paths = self.source.http_paths("cache")
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            got = ((c.get(kind) or {}).get("httpGet") or {}).get("path")
            if got and got not in paths:
                self.fail(where, f"{kind} path {got} is not served by trestle cache serve")

    # ---- PDBs and NetworkPolicies ---------------------------------------------------------------------------
    def pdb(self, pdb: dict, sets: list[dict]) -> None:
        where = f"{self.overlay} PodDisruptionBudget/{pdb['metadata']['name']}"
        targets = [s for s in sets if matches(pdb["spec"]["selector"].get("matchLabels") or {}, s["spec"]["template"]["metadata"]["labels"])]
        if not targets:
            self.fail(where, "its selector matches no workload's pods")
        if pdb["spec"].get("maxUnavailable") != 1:
            self.fail(where, f"maxUnavailable {pdb['spec'].get('maxUnavailable')}, expected 1")
        for s in targets:
            replicas = s["spec"].get("replicas", 1)
            if s["metadata"]["name"] == "trestle-store" and pdb["spec"].get("maxUnavailable", 0) > (replicas - 1) // 2:
                self.fail(where, f"allows more members down than a quorum of {replicas} tolerates")

    def network_policy(self, np: dict, sets: list[dict]) -> None:
        where = f"{self.overlay} NetworkPolicy/{np['metadata']['name']}"
        selector = np["spec"]["podSelector"].get("matchLabels") or {}
        targets = [s for s in sets if matches(selector, s["spec"]["template"]["metadata"]["labels"])]
        if not targets:
            self.fail(where, "its podSelector matches no workload's pods")
            return
        if "Ingress" not in (np["spec"].get("policyTypes") or []):
            self.fail(where, "does not restrict ingress")
        c = targets[0]["spec"]["template"]["spec"]["containers"][0]
        container_ports = {p["containerPort"] for p in c.get("ports") or []}
        allowed = set()
        for rule in np["spec"].get("ingress") or []:
            if not rule.get("from"):
                self.fail(where, "an ingress rule allows every source")
            if not rule.get("ports"):
                self.fail(where, "an ingress rule allows every port")
            for p in rule.get("ports") or []:
                allowed.add(p["port"])
        if allowed - container_ports:
            self.fail(where, f"allows ports {sorted(allowed - container_ports)} that the pods do not listen on")
        if allowed != container_ports:
            self.fail(where, f"ingress ports {sorted(allowed)} differ from the pods' ports {sorted(container_ports)}")
        if targets[0]["metadata"]["name"] == "trestle-store":
            peers = [r for r in np["spec"].get("ingress") or []
                     if any(matches(f.get("podSelector", {}).get("matchLabels") or {}, targets[0]["spec"]["template"]["metadata"]["labels"]) for f in r.get("from") or [])]
            peer_port = port_number(c, "peer")
            if not peers or {p["port"] for r in peers for p in r.get("ports") or []} != {peer_port}:
                self.fail(where, f"members may reach each other on other ports than the peer port {peer_port}, or not at all")


# ---- planted faults: each must be caught ----------------------------------------------------------------------
def find(docs, kind, name):
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def store_container(docs):
    return find(docs, "StatefulSet", "trestle-store")["spec"]["template"]["spec"]["containers"][0]


def set_env(c, name, value):
    for e in c["env"]:
        if e["name"] == name:
            e["value"] = value


FAULTS = {
    "publishNotReadyAddresses off": lambda d: find(d, "Service", "trestle-store")["spec"].pop("publishNotReadyAddresses"),
    "readiness on /livez": lambda d: store_container(d)["readinessProbe"]["httpGet"].update(path="/livez"),
    "liveness on a path the binary lacks": lambda d: store_container(d)["livenessProbe"]["httpGet"].update(path="/alive"),
    "serviceName typo": lambda d: find(d, "StatefulSet", "trestle-store")["spec"].update(serviceName="trestle"),
    "one more replica than founders": lambda d: find(d, "StatefulSet", "trestle-store")["spec"].update(
        replicas=find(d, "StatefulSet", "trestle-store")["spec"]["replicas"] + 2),
    "PDB allows two": lambda d: find(d, "PodDisruptionBudget", "trestle-store")["spec"].update(maxUnavailable=2),
    "PDB selects nothing": lambda d: find(d, "PodDisruptionBudget", "trestle-store")["spec"]["selector"].update(
        matchLabels={"app.kubernetes.io/name": "trestle"}),
    "root filesystem writable": lambda d: store_container(d)["securityContext"].update(readOnlyRootFilesystem=False),
    "no resources": lambda d: store_container(d).pop("resources"),
    "a Secret baked in": lambda d: d.append({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"},
                                             "stringData": {"tls.key": "..."}}),
    "a password in env": lambda d: store_container(d)["env"].append({"name": "ADMIN_PASSWORD", "value": "hunter2"}),
    "env used before defined": lambda d: store_container(d)["env"].insert(0, {"name": "X", "value": "$(POD_NAME)"}),
    "wrong peer port in script": lambda d: store_container(d)["command"].__setitem__(
        2, store_container(d)["command"][2].replace("0.0.0.0:2380", "0.0.0.0:2390")),
    "founders always found": lambda d: store_container(d)["command"].__setitem__(
        2, store_container(d)["command"][2].replace('[ "${CLUSTER_STATE}" = new ]', "true")),
    "joiners found too": lambda d: store_container(d)["command"].__setitem__(
        2, store_container(d)["command"][2].replace("state=existing\n", "state=new\n")),
    "unknown serve flag": lambda d: store_container(d)["command"].__setitem__(
        2, store_container(d)["command"][2].replace("--data-dir", "--datadir")),
    "scrape port wrong": lambda d: find(d, "StatefulSet", "trestle-store")["spec"]["template"]["metadata"]["annotations"].update(
        {"prometheus.io/port": "2379"}),
    "members open on every port": lambda d: find(d, "NetworkPolicy", "trestle-store")["spec"]["ingress"][1].pop("ports"),
    "preStop removes a member": lambda d: store_container(d).update(
        lifecycle={"preStop": {"exec": {"command": ["etcdctl", "member", "remove", "x"]}}}),
    "cache memory above its limit": lambda d: find(d, "StatefulSet", "trestle-cache")["spec"]["template"]["spec"]["containers"][0]["args"].__setitem__(
        4, "--memory=99999999999"),
    "cache without zone spread": lambda d: find(d, "StatefulSet", "trestle-cache")["spec"]["template"]["spec"].pop("topologySpreadConstraints"),
}
TLS_FAULTS = {
    "TLS key not from the Secret": lambda d: set_env(store_container(d), "TRESTLE_KEY_FILE", "/var/lib/trestle/tls.key"),
    "plaintext peers in a TLS overlay": lambda d: set_env(store_container(d), "PEER_SCHEME", "http"),
}


def self_test(checker: Checker, overlay: str, docs: list[dict]) -> list[str]:
    problems = []
    faults = dict(FAULTS)
    if EXPECT.get(overlay, {}).get("tls"):
        faults.update(TLS_FAULTS)
    for name, plant in faults.items():
        planted = copy.deepcopy(docs)
        plant(planted)
        if not checker.check(overlay, planted):
            problems.append(f"{overlay}: self-test: the planted fault '{name}' was not caught")
    return problems


def dockerfile_problems(repo: pathlib.Path) -> list[str]:
    """The image's dependency layer copies every workspace member's manifest (cargo --locked needs them all) and
    puts a placeholder at every bench and test target that a manifest declares by name."""
    import tomllib
    dockerfile = (repo / "deploy/docker/trestle.Dockerfile").read_text(encoding="utf-8")
    members = tomllib.loads((repo / "Cargo.toml").read_text(encoding="utf-8"))["workspace"]["members"]
    problems = []
    for member in members:
        if f"COPY {member}/Cargo.toml {member}/Cargo.toml" not in dockerfile:
            problems.append(f"trestle.Dockerfile: the dependency layer does not copy {member}/Cargo.toml")
        manifest = tomllib.loads((repo / member / "Cargo.toml").read_text(encoding="utf-8"))
        for kind, folder in (("bench", "benches"), ("test", "tests")):
            for target in manifest.get(kind, []):
                if "path" not in target and f"{member}/{folder}/{target['name']}.rs" not in dockerfile and not (
                    f"{member}/{folder}/$" in dockerfile and target["name"] in dockerfile):
                    problems.append(f"trestle.Dockerfile: no placeholder for {member}/{folder}/{target['name']}.rs")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", required=True, type=pathlib.Path)
    parser.add_argument("--self-test", action="store_true")
    parser.add_argument("overlays", nargs="+", metavar="OVERLAY=RENDERED.yaml")
    args = parser.parse_args()
    checker = Checker(Source(args.repo))
    problems: list[str] = []
    for item in args.overlays:
        overlay, _, path = item.partition("=")
        docs = load(path)
        found = checker.check(overlay, docs)
        problems += found
        print(f"{overlay}: {len(docs)} objects, {len(found)} problems")
        if args.self_test and not found:
            caught = self_test(checker, overlay, docs)
            problems += caught
            n = len(FAULTS) + (len(TLS_FAULTS) if EXPECT.get(overlay, {}).get("tls") else 0)
            print(f"{overlay}: self-test: {n - len(caught)} of {n} planted faults caught")
    docker = dockerfile_problems(args.repo)
    print(f"trestle.Dockerfile: {len(docker)} problems with the workspace's members and targets")
    problems += docker
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
