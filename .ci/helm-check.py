#!/usr/bin/env python3
"""Check the Helm chart helm/pgwebhooks: lint, render, validate, assert invariants.

No helm binary, no cluster, no network (no chart repositories).

Requirements (PyPI; nothing else):
    python3 -m pip install 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0'
  - helm-python-sdk (import name `helm_python`): Helm v4's Go SDK through a
    bundled C library (libhelm_c). Pinned because rendering with extra API
    versions uses the library's native `helm_render` options
    (`api_versions`, `kube_version`), which the 0.2.2 Python wrapper does not
    expose as keyword arguments.
  - kubernetes-validate: the Kubernetes OpenAPI schemas as JSON schemas
    (brings PyYAML and jsonschema).

Run: python3 .ci/helm-check.py [-v] [CHART_DIR]   (exit 0 when every check passes;
     -v prints every check; CHART_DIR defaults to helm/pgwebhooks)
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

try:
    import helm_python as helm
    from helm_python import _native
    import kubernetes_validate
    import yaml
except ImportError as exc:  # pragma: no cover - environment problem
    sys.exit(
        f"helm-check: missing dependency ({exc}); install with\n"
        "  python3 -m pip install 'helm-python-sdk==0.2.2' 'kubernetes-validate==1.37.0'"
    )

ROOT = Path(__file__).resolve().parent.parent
_ARGS = [a for a in sys.argv[1:] if a != "-v"]
CHART = Path(_ARGS[0]).resolve() if _ARGS else ROOT / "helm" / "pgwebhooks"
KUBE_VERSION = "1.37.0"  # newest schema set kubernetes-validate 1.37.0 ships
RELEASE = "hooks"
NAMESPACE = "apps"
MONITORING_API = "monitoring.coreos.com/v1"
CUSTOM_METRICS_API = "custom.metrics.k8s.io/v1beta1"

SECRET_KEYS = [
    "DATABASE_URL",
    "PGWEBHOOKS_INBOUND_SECRET",
    "PGWEBHOOKS_ADMIN_TOKEN",
    "WEBHOOK_SECRET",
    "MAKE_WEBHOOK_APPOINTMENTS_URL",
    "MAKE_WEBHOOK_MESSAGES_URL",
    "MAKE_WEBHOOK_COHORT_ENROLLMENTS_URL",
    "MAKE_WEBHOOK_COHORT_MESSAGES_URL",
    "MAKE_WEBHOOK_SUPPORT_TICKETS_URL",
    "MAKE_WEBHOOK_PAYMENTS_URL",
    "MAKE_WEBHOOK_ERRORS_URL",
    "WEBHOOK_URL",
    "MAKE_WEBHOOK_ADMIN_URL",
]
# Credentials of the "full" set: none of these strings may appear in any
# rendered object but the Secret.
FULL_SECRETS = {
    "DATABASE_URL": "postgres://ci_user:ci-db-pass-7f3a@db.apps.svc:5432/app",
    "MIGRATE_DATABASE_URL": "postgres://ci_owner:ci-owner-pass-91c2@db.apps.svc:5432/app",
    "PGWEBHOOKS_INBOUND_SECRET": "ci-inbound-secret-4b1d9e",
    "PGWEBHOOKS_ADMIN_TOKEN": "ci-admin-token-5e8c0a2f",
    "MAKE_WEBHOOK_APPOINTMENTS_URL": "https://hook.eu1.make.com/ci-appointments-token",
    "MAKE_WEBHOOK_PAYMENTS_URL": "https://hook.eu1.make.com/ci-payments-token",
    "WEBHOOK_URL": "https://receiver.example.com/ci-fallback-token",
}

# The render sets. `api_versions` simulates CRDs the cluster serves.
SETS: list[dict[str, Any]] = [
    {
        "name": "default",
        "values": {},
        "api_versions": [],
        "expect": {"replicas": 1, "pdb": False, "servicemonitor": False, "ingress": False,
                   "secret": True, "job": True, "hpa": False, "backlog": False, "netpol": False,
                   "admin_listen": "0.0.0.0:9477"},
    },
    {
        "name": "full (3 replicas, ServiceMonitor + CRD, ingress)",
        "values": {
            "replicaCount": 3,
            "shutdownGraceSeconds": 25,
            "preStopSleepSeconds": 5,
            "config": {"PGWEBHOOKS_LOG_FORMAT": "json", "PGWEBHOOKS_TIMEOUT": "10s",
                       "PGWEBHOOKS_INBOUND_MAX_BODY": "1048576"},
            "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
            "ingress": {"enabled": True, "className": "nginx", "host": "hooks.example.com",
                        "tlsSecretName": "hooks-example-com-tls",
                        "annotations": {"cert-manager.io/cluster-issuer": "letsencrypt"}},
            "secrets": {"values": dict(FULL_SECRETS), "migrateDatabaseUrlKey": "MIGRATE_DATABASE_URL"},
            "migrations": {"installExample": True},
            "extraEnv": [{"name": "PGSSLMODE", "value": "require"}],
            "autoscaling": {"enabled": True, "minReplicas": 2, "maxReplicas": 6,
                            "backlog": {"enabled": True, "averageValue": "500"}},
            "networkPolicy": {"enabled": True,
                              "inboundFrom": [{"namespaceSelector": {"matchLabels": {
                                  "kubernetes.io/metadata.name": "ingress-nginx"}}}],
                              "adminFrom": [{"namespaceSelector": {"matchLabels": {
                                  "kubernetes.io/metadata.name": "ops"}}}]},
        },
        "api_versions": [MONITORING_API, CUSTOM_METRICS_API],
        "expect": {"replicas": None, "pdb": True, "servicemonitor": True, "ingress": True,
                   "secret": True, "job": True, "hpa": True, "backlog": True, "netpol": True,
                   "admin_listen": "0.0.0.0:9477"},
    },
    {
        "name": "existing Secret (ServiceMonitor on, no CRD)",
        "values": {
            "replicaCount": 2,
            "secrets": {"create": False, "existingSecret": "pgwebhooks-credentials"},
            "allowPrivateTargets": True,
            "serviceMonitor": {"enabled": True},
            "podDisruptionBudget": {"enabled": True},
            "admin": {"containerPort": 9477, "service": False, "servicePort": 9477},
            "autoscaling": {"enabled": True, "backlog": {"enabled": True}},
            "networkPolicy": {"enabled": True},
        },
        "api_versions": [],
        "expect": {"replicas": None, "pdb": True, "servicemonitor": False, "ingress": False,
                   "secret": False, "job": True, "hpa": True, "backlog": False, "netpol": True,
                   "admin_listen": "127.0.0.1:9477"},
    },
]

# Values values.schema.json must refuse: (description, values).
SCHEMA_REJECTS: list[tuple[str, dict[str, Any]]] = [
    ("typo'd top-level key", {"replicas": 2}),
    ("unknown nested key", {"image": {"repo": "x"}}),
    ("wrong type", {"replicaCount": "3"}),
    ("bad enum (image.pullPolicy)", {"image": {"pullPolicy": "Sometimes"}}),
    ("bad enum (service.type)", {"service": {"type": "ExternalName"}}),
    ("reserved config key (PGWEBHOOKS_LISTEN)", {"config": {"PGWEBHOOKS_LISTEN": "0.0.0.0:9"}}),
    ("credential in config", {"config": {"PGWEBHOOKS_INBOUND_SECRET": "x"}}),
    ("config key outside PGWEBHOOKS_*", {"config": {"DATABASE_URL": "postgres://a@b/c"}}),
    ("non-string config value", {"config": {"PGWEBHOOKS_BATCH_SIZE": 500}}),
    ("literal DATABASE_URL in extraEnv", {"extraEnv": [{"name": "DATABASE_URL", "value": "postgres://a@b/c"}]}),
    ("unknown secret key", {"secrets": {"values": {"DATABASE_URI": "postgres://a@b/c"}}}),
    ("Make URL that is not a URL", {"secrets": {"values": {"MAKE_WEBHOOK_ERRORS_URL": "hook.make.com"}}}),
    ("shutdownGraceSeconds 0", {"shutdownGraceSeconds": 0}),
    ("reserved config key (PGWEBHOOKS_ALLOW_PRIVATE_TARGETS)",
     {"config": {"PGWEBHOOKS_ALLOW_PRIVATE_TARGETS": "true"}}),
    ("allowPrivateTargets not a boolean", {"allowPrivateTargets": "true"}),
    ("reserved config key (PGWEBHOOKS_ADMIN_LISTEN)", {"config": {"PGWEBHOOKS_ADMIN_LISTEN": "0.0.0.0:9"}}),
    ("admin token in config", {"config": {"PGWEBHOOKS_ADMIN_TOKEN": "x" * 20}}),
    ("short admin token", {"secrets": {"values": {"PGWEBHOOKS_ADMIN_TOKEN": "short"}}}),
    ("unknown autoscaling key", {"autoscaling": {"enabled": True, "cpu": 50}}),
    ("CPU target over 100%", {"autoscaling": {"enabled": True, "targetCPUUtilizationPercentage": 150}}),
    ("networkPolicy peers not a list", {"networkPolicy": {"enabled": True, "adminFrom": {"podSelector": {}}}}),
]
# Values the templates must refuse with a message naming the setting: (description, values, part).
RENDER_REJECTS: list[tuple[str, dict[str, Any], str]] = [
    ("existingSecret together with create", {"secrets": {"existingSecret": "s"}}, "secrets.create"),
    ("ingress without host", {"ingress": {"enabled": True}}, "ingress.host"),
]


class Checker:
    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.passed = 0
        self.failures: list[str] = []
        self._section: str | None = None
        self._counts = [0, 0]

    def section(self, title: str | None) -> None:
        """Close the current section (printing its tally) and open the next."""
        if self._section is not None:
            ok, bad = self._counts
            print(f"  -> {ok} checks passed" + (f", {bad} FAILED" if bad else ""))
        self._section, self._counts = title, [0, 0]
        if title is not None:
            print(f"\n== {title}")

    def check(self, ok: bool, what: str) -> bool:
        if ok:
            self.passed += 1
            self._counts[0] += 1
            if self.verbose:
                print(f"  ok   {what}")
        else:
            self.failures.append(what)
            self._counts[1] += 1
            print(f"  FAIL {what}")
        return ok


def render(chart: helm.Chart, values: dict[str, Any], api_versions: list[str]) -> dict[str, str]:
    """helm template: offline render with the given extra API versions (simulated CRDs)."""
    opts = {"name": RELEASE, "namespace": NAMESPACE, "kube_version": f"v{KUBE_VERSION}",
            "is_install": True}
    if api_versions:
        opts["api_versions"] = api_versions
    rendered = _native.call_string("helm_render", chart._raw(), json.dumps(values), json.dumps(opts))
    manifests: dict[str, str] = json.loads(rendered)
    return manifests


def objects_of(manifests: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or Path(path).name.startswith("_"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append((path, doc))
    return out


def containers_of(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def duration_seconds(text: str) -> float:
    m = re.fullmatch(r"(\d+)(ms|s|m|h)", text)
    if not m:
        raise ValueError(f"unparsable duration {text!r}")
    return int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_security(c: Checker, where: str, pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    psc = pod_spec.get("securityContext", {})
    sc = container.get("securityContext", {})
    c.check(psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is True,
            f"{where}: runAsNonRoot true (pod and container)")
    c.check(sc.get("runAsUser") == 10001 and psc.get("runAsUser") == 10001, f"{where}: runAsUser 10001")
    c.check(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem true")
    c.check(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false")
    c.check(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities drop ALL")
    c.check(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
            f"{where}: seccompProfile RuntimeDefault")


def check_env(c: Checker, where: str, container: dict[str, Any]) -> None:
    env = container.get("env", [])
    names = [e["name"] for e in env]
    c.check(len(names) == len(set(names)), f"{where}: no duplicate env names")
    db = [e for e in env if e["name"] == "DATABASE_URL"]
    c.check(len(db) == 1, f"{where}: DATABASE_URL set once")
    for e in env:
        if e["name"] in SECRET_KEYS:
            ok = "value" not in e and "secretKeyRef" in e.get("valueFrom", {})
            c.check(ok, f"{where}: {e['name']} only via secretKeyRef")
    for e in db:
        c.check(e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional") is not True,
                f"{where}: DATABASE_URL reference is not optional")


def check_set(c: Checker, chart: helm.Chart, spec: dict[str, Any]) -> dict[str, Any]:
    name, values, expect = spec["name"], spec["values"], spec["expect"]
    c.section(f"render: {name}")
    try:
        chart.validate_schema(values)
        c.check(True, f"[{name}] values pass values.schema.json")
    except helm.HelmError as exc:
        c.check(False, f"[{name}] values pass values.schema.json: {exc}")
    try:
        manifests = render(chart, values, spec["api_versions"])
    except helm.HelmError as exc:
        c.check(False, f"[{name}] renders: {exc}")
        return {"objects": 0}
    objs = objects_of(manifests)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for _, o in objs:
        by_kind.setdefault(o["kind"], []).append(o)
    merged = chart.merge_values(values)

    # 1. Every object against the Kubernetes schemas (strict), CRDs by shape.
    for path, o in objs:
        ident = f"[{name}] {o.get('kind')}/{o.get('metadata', {}).get('name')} ({path})"
        if o.get("kind") == "ServiceMonitor":
            c.check(o.get("apiVersion") == MONITORING_API, f"{ident}: apiVersion {MONITORING_API}")
            eps = o.get("spec", {}).get("endpoints", [])
            c.check(any(e.get("port") == "http" and e.get("path") == "/metrics" for e in eps),
                    f"{ident}: scrapes port http path /metrics")
            continue
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
            c.check(True, ident)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(p) for p in exc.path)
            c.check(False, f"{ident}: Kubernetes {KUBE_VERSION} schema: {where}: {exc.message}")
        except Exception as exc:  # SchemaNotFoundError and friends
            c.check(False, f"{ident}: not validated: {getattr(exc, 'message', exc)}")
        labels = o.get("metadata", {}).get("labels", {})
        c.check(all(k in labels for k in ("app.kubernetes.io/name", "app.kubernetes.io/instance",
                                          "app.kubernetes.io/version", "app.kubernetes.io/managed-by",
                                          "helm.sh/chart")),
                f"{ident}: standard labels")

    # 2. Presence of each optional object.
    deployments = by_kind.get("Deployment", [])
    jobs = by_kind.get("Job", [])
    c.check(len(deployments) == 1, f"[{name}] one Deployment")
    c.check(len(by_kind.get("Service", [])) == 1, f"[{name}] one Service")
    c.check(len(by_kind.get("ServiceAccount", [])) == 1, f"[{name}] one ServiceAccount")
    c.check(bool(jobs) == expect["job"], f"[{name}] migration Job present: {expect['job']}")
    c.check(bool(by_kind.get("PodDisruptionBudget")) == expect["pdb"],
            f"[{name}] PodDisruptionBudget present: {expect['pdb']}")
    c.check(bool(by_kind.get("ServiceMonitor")) == expect["servicemonitor"],
            f"[{name}] ServiceMonitor present: {expect['servicemonitor']}")
    c.check(bool(by_kind.get("Ingress")) == expect["ingress"], f"[{name}] Ingress present: {expect['ingress']}")
    c.check(bool(by_kind.get("Secret")) == expect["secret"], f"[{name}] chart Secret present: {expect['secret']}")
    if not deployments:
        return {"objects": len(objs)}

    # 3. The Deployment.
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    c.check(dep["spec"].get("replicas") == expect["replicas"],
            f"[{name}] replicas {expect['replicas']} (none: the HorizontalPodAutoscaler's)")
    c.check(labels_match(dep["spec"]["selector"]["matchLabels"], pod_labels),
            f"[{name}] Deployment selector matches its pods")
    main = next((x for x in pod["containers"] if x["name"] == "pgwebhooks"), None)
    if not c.check(main is not None, f"[{name}] container pgwebhooks"):
        return {"objects": len(objs)}
    check_security(c, f"[{name}] Deployment", pod, main)
    check_env(c, f"[{name}] Deployment", main)
    c.check(main.get("args") == ["run"], f"[{name}] sidecar runs `pgwebhooks run`")
    ports = {p["name"]: p["containerPort"] for p in main.get("ports", [])}
    c.check(ports.get("http") == 8080, f"[{name}] container port http = 8080")
    c.check(ports.get("admin") == 9477, f"[{name}] container port admin = 9477")
    live = main.get("livenessProbe", {}).get("httpGet", {})
    ready = main.get("readinessProbe", {}).get("httpGet", {})
    c.check(live.get("path") == "/healthz" and live.get("port") in ("http", 8080),
            f"[{name}] liveness probe GET /healthz")
    c.check(ready.get("path") == "/readyz" and ready.get("port") in ("http", 8080),
            f"[{name}] readiness probe GET /readyz")
    env = {e["name"]: e for e in main.get("env", [])}
    c.check(env.get("PGWEBHOOKS_REPLICA", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
            == "metadata.name", f"[{name}] PGWEBHOOKS_REPLICA from the pod name")
    c.check(env.get("PGWEBHOOKS_LISTEN", {}).get("value") == "0.0.0.0:8080", f"[{name}] PGWEBHOOKS_LISTEN")
    c.check(env.get("PGWEBHOOKS_ADMIN_LISTEN", {}).get("value") == expect["admin_listen"],
            f"[{name}] PGWEBHOOKS_ADMIN_LISTEN = {expect['admin_listen']}")
    c.check(env.get("PGWEBHOOKS_ADMIN_TOKEN", {}).get("valueFrom", {}).get("secretKeyRef", {}).get("key")
            == ("PGWEBHOOKS_ADMIN_TOKEN" if (merged["secrets"]["existingSecret"]
                                             or merged["secrets"]["values"].get("PGWEBHOOKS_ADMIN_TOKEN")) else None),
            f"[{name}] PGWEBHOOKS_ADMIN_TOKEN only from the Secret")
    allow = "true" if merged["allowPrivateTargets"] else "false"
    c.check(env.get("PGWEBHOOKS_ALLOW_PRIVATE_TARGETS", {}).get("value") == allow,
            f"[{name}] PGWEBHOOKS_ALLOW_PRIVATE_TARGETS = {allow} from allowPrivateTargets")
    grace = duration_seconds(env.get("PGWEBHOOKS_SHUTDOWN_GRACE", {}).get("value", "0s"))
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    pre_stop = main.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    c.check(grace == merged["shutdownGraceSeconds"], f"[{name}] PGWEBHOOKS_SHUTDOWN_GRACE = {grace:g}s from values")
    c.check(tgps > grace + pre_stop,
            f"[{name}] terminationGracePeriodSeconds {tgps} > preStop {pre_stop} + shutdown grace {grace:g}")
    for key, val in merged["config"].items():
        c.check(env.get(key, {}).get("value") == val, f"[{name}] config {key} rendered as env")
    res = main.get("resources", {})
    c.check(bool(res.get("requests")) and bool(res.get("limits", {}).get("memory")),
            f"[{name}] resources: requests and a memory limit")
    c.check(pod.get("automountServiceAccountToken") is False, f"[{name}] no service account token mounted")

    # Secret references.
    secret_name = merged["secrets"]["existingSecret"] or f"{RELEASE}-pgwebhooks"
    db_ref = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
    c.check(db_ref.get("name") == secret_name and db_ref.get("key") == "DATABASE_URL",
            f"[{name}] DATABASE_URL from Secret {secret_name}")
    if merged["secrets"]["existingSecret"]:
        optional = [k for k in SECRET_KEYS[1:] if env.get(k, {}).get("valueFrom", {})
                    .get("secretKeyRef", {}).get("optional") is True]
        c.check(optional == SECRET_KEYS[1:], f"[{name}] other credentials: optional refs to the existing Secret")

    # 4. Service, PDB, ServiceMonitor, Ingress wiring.
    svc = by_kind["Service"][0]
    c.check(svc["spec"]["type"] == "ClusterIP", f"[{name}] Service ClusterIP")
    sp = svc["spec"]["ports"][0]
    c.check((sp["name"], sp["port"], sp["targetPort"]) == ("http", 80, "http"), f"[{name}] Service 80 -> http")
    c.check(labels_match(svc["spec"]["selector"], pod_labels), f"[{name}] Service selects the sidecar pods")
    admin_ports = [p for p in svc["spec"]["ports"] if p["name"] == "admin"]
    want_admin = merged["admin"]["service"]
    c.check(bool(admin_ports) == want_admin
            and all((p["port"], p["targetPort"]) == (9477, "admin") for p in admin_ports),
            f"[{name}] Service port admin 9477 -> admin: {want_admin}")
    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    c.check(bool(hpas) == expect["hpa"], f"[{name}] HorizontalPodAutoscaler present: {expect['hpa']}")
    for hpa in hpas:
        ref = hpa["spec"]["scaleTargetRef"]
        c.check((ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"]),
                f"[{name}] HPA scales the Deployment")
        auto = merged["autoscaling"]
        c.check((hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (auto["minReplicas"], auto["maxReplicas"]),
                f"[{name}] HPA min/max from values")
        metrics = hpa["spec"]["metrics"]
        c.check(any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics),
                f"[{name}] HPA scales on CPU")
        backlog = [m for m in metrics if m["type"] == "Pods" and m["pods"]["metric"]["name"] == "pgwebhooks_backlog"]
        c.check(bool(backlog) == expect["backlog"],
                f"[{name}] HPA scales on pgwebhooks_backlog only where {CUSTOM_METRICS_API} is served: {expect['backlog']}")
    nps = by_kind.get("NetworkPolicy", [])
    c.check(bool(nps) == expect["netpol"], f"[{name}] NetworkPolicy present: {expect['netpol']}")
    for np in nps:
        c.check(labels_match(np["spec"]["podSelector"]["matchLabels"], pod_labels), f"[{name}] NetworkPolicy selects the sidecar pods")
        rules = np["spec"].get("ingress", [])
        admin_rules = [r for r in rules if any(p.get("port") == "admin" for p in r.get("ports", []))]
        peers = merged["networkPolicy"]["adminFrom"]
        c.check(all(r.get("from") == peers and peers for r in admin_rules) and bool(admin_rules) == bool(peers),
                f"[{name}] NetworkPolicy: the admin port only from networkPolicy.adminFrom ({len(peers)} peers)")
        c.check(any(any(p.get("port") == "http" for p in r.get("ports", [])) for r in rules)
                and all(r.get("ports") for r in rules),
                f"[{name}] NetworkPolicy: the inbound port allowed, every rule names its port")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        c.check(pdb["spec"].get("maxUnavailable") == 1, f"[{name}] PDB maxUnavailable 1")
        c.check(labels_match(pdb["spec"]["selector"]["matchLabels"], pod_labels), f"[{name}] PDB selects the sidecar pods")
    for sm in by_kind.get("ServiceMonitor", []):
        c.check(labels_match(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]),
                f"[{name}] ServiceMonitor selects the Service")
    for ing in by_kind.get("Ingress", []):
        backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        c.check(all(b["name"] == svc["metadata"]["name"] and b["port"].get("name") == "http" for b in backends),
                f"[{name}] Ingress routes to the Service's http port (never admin)")
        paths = [p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        c.check("/api/webhooks/make" in paths and "/metrics" not in paths and "/" not in paths,
                f"[{name}] Ingress exposes the callback paths only")

    # 5. Migration Job: a pre-install,pre-upgrade hook with the same hardening.
    for job in jobs:
        ann = job["metadata"].get("annotations", {})
        hooks = {h.strip() for h in ann.get("helm.sh/hook", "").split(",")}
        c.check({"pre-install", "pre-upgrade"} <= hooks, f"[{name}] Job is a pre-install,pre-upgrade hook")
        policy = {h.strip() for h in ann.get("helm.sh/hook-delete-policy", "").split(",")}
        c.check({"before-hook-creation", "hook-succeeded"} <= policy, f"[{name}] Job hook-delete-policy")
        jpod = job["spec"]["template"]["spec"]
        jc = jpod["containers"][0]
        c.check(jc.get("args", [None])[0] == "migrate", f"[{name}] Job runs `pgwebhooks migrate`")
        c.check(("--example" in jc.get("args", [])) == merged["migrations"]["installExample"],
                f"[{name}] Job --example follows migrations.installExample")
        check_security(c, f"[{name}] Job", jpod, jc)
        check_env(c, f"[{name}] Job", jc)
        jdb = next(e for e in jc.get("env", []) if e["name"] == "DATABASE_URL")["valueFrom"]["secretKeyRef"]
        want_key = merged["secrets"]["migrateDatabaseUrlKey"] or merged["secrets"]["databaseUrlKey"]
        c.check(jdb.get("key") == want_key, f"[{name}] Job's DATABASE_URL from key {want_key} (the migrate role's)")
        c.check(not any(e["name"] == "MIGRATE_DATABASE_URL" or
                        e.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "MIGRATE_DATABASE_URL"
                        for e in main.get("env", [])),
                f"[{name}] the sidecar never gets the migrate role's URL")
        extra = [e["name"] for e in jc.get("env", []) if e["name"] in SECRET_KEYS[1:]]
        c.check(not extra, f"[{name}] Job gets no credential but DATABASE_URL (found {extra})")
        c.check(jc.get("securityContext") == main.get("securityContext")
                and jpod.get("securityContext") == pod.get("securityContext"),
                f"[{name}] Job has the sidecar's security context")
        c.check(not labels_match(svc["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"]),
                f"[{name}] Service does not select migration pods")
        c.check("serviceAccountName" not in jpod or jpod["serviceAccountName"] != f"{RELEASE}-pgwebhooks",
                f"[{name}] Job does not need the ServiceAccount created after pre-install hooks")
        for sec in by_kind.get("Secret", []):
            sann = sec["metadata"].get("annotations", {})
            shooks = {h.strip() for h in sann.get("helm.sh/hook", "").split(",")}
            c.check({"pre-install", "pre-upgrade"} <= shooks
                    and int(sann.get("helm.sh/hook-weight", "0")) < int(ann.get("helm.sh/hook-weight", "0")),
                    f"[{name}] chart Secret is a hook created before the Job")

    # 6. The chart's Secret holds only non-empty keys; credentials appear nowhere else.
    for sec in by_kind.get("Secret", []):
        data = sec.get("stringData", {}) or {}
        wanted = {k for k, v in merged["secrets"]["values"].items() if v}
        c.check(set(data) == wanted, f"[{name}] Secret keys = the non-empty secrets.values ({len(wanted)})")
    secrets_given = [v for v in merged["secrets"]["values"].values() if v]
    leaked = [path for path, o in objs if o["kind"] != "Secret"
              for v in secrets_given if v in json.dumps(o)]
    notes = next((t for p, t in manifests.items() if p.endswith("NOTES.txt")), "")
    leaked += ["NOTES.txt" for v in secrets_given if v in notes]
    c.check(not leaked, f"[{name}] no credential outside the Secret (found in: {sorted(set(leaked))})")

    # 7. NOTES.txt tells the operator the callback URL, its header and how to add an endpoint.
    c.check("/api/webhooks/make/<route>" in notes and "x-make-apikey" in notes,
            f"[{name}] NOTES: callback URL and x-make-apikey header")
    c.check(f"deploy/{RELEASE}-pgwebhooks -- \\" in notes and "pgwebhooks endpoint add --url" in notes,
            f"[{name}] NOTES: kubectl exec ... pgwebhooks endpoint add")
    c.check("kubectl port-forward" in notes and "/console" in notes, f"[{name}] NOTES: how to reach the console")
    if expect["ingress"]:
        host = merged["ingress"]["host"]
        c.check(f"https://{host}/api/webhooks/make/<route>" in notes, f"[{name}] NOTES: public callback URL")
    return {"objects": len(objs), "kinds": sorted(f"{k}x{len(v)}" if len(v) > 1 else k for k, v in by_kind.items())}


def main() -> int:
    c = Checker(verbose="-v" in sys.argv[1:])
    print(f"helm-check: chart {CHART}, Helm SDK {helm.helm_sdk_version()} "
          f"(helm-python-sdk {helm.__version__}), Kubernetes schemas {KUBE_VERSION} "
          f"(kubernetes-validate {kubernetes_validate.__version__}, strict)")

    # Lint, strict: warnings count as failures (info messages, e.g. "icon is recommended", do not).
    c.section("lint (strict)")
    for label, values in (("default values", None), ("full set", SETS[1]["values"])):
        report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        for m in report["messages"]:
            print(f"  [{['unknown', 'INFO', 'WARNING', 'ERROR'][m['severity']]}] {m['path']}: {m['error']}")
        c.check(not bad and not report["errors"] and report["total_charts_linted"] == 1,
                f"lint --strict ({label}): {report['errors'] or [m['error'] for m in bad] or 'clean'}")

    with helm.Chart.load(CHART) as chart:
        meta = chart.metadata
        c.check(meta.get("apiVersion") == "v2" and meta.get("name") == "pgwebhooks"
                and meta.get("appVersion") == "0.1.0", "Chart.yaml: apiVersion v2, name pgwebhooks, appVersion 0.1.0")
        schema = chart.schema or {}
        c.check(schema.get("$schema", "").startswith("http://json-schema.org/draft-07/")
                and schema.get("additionalProperties") is False,
                "values.schema.json: draft-07, additionalProperties false at the top level")

        c.section("values the chart must refuse (values.schema.json, template checks)")
        for label, values in SCHEMA_REJECTS:
            try:
                chart.validate_schema(values)
                c.check(False, f"schema rejects {label}")
            except helm.HelmValuesError:
                c.check(True, f"schema rejects {label}")
        for label, values, part in RENDER_REJECTS:
            try:
                render(chart, values, [])
                c.check(False, f"render fails on {label}")
            except helm.HelmError as exc:
                c.check(part in str(exc), f"render fails on {label} (message names {part})")

        summary = []
        for spec in SETS:
            summary.append((spec["name"], check_set(c, chart, spec)))

    c.section(None)
    print("\n== summary")
    for label, info in summary:
        print(f"  {label}: {info['objects']} objects {', '.join(info.get('kinds', []))}")
    print(f"  {c.passed} checks passed, {len(c.failures)} failed")
    for f in c.failures:
        print(f"  FAILED: {f}")
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
