"""The kustomize overlays render offline, validate strictly against the Kubernetes 1.37 schemas
(and the Prometheus Operator CRDs), and follow the rules SREs rely on (deploy/k8s/README.md)."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.deploy.k8s import KUBERNETES_VERSION, OVERLAYS, ROOT, config_map_env, named, of_kind, render, selects

pytestmark = pytest.mark.deploy

SERVICES = ("auth", "contacts", "messaging", "zhadui", "open-platform")
PROCESSES = (*SERVICES, "gateway")
# Settings whose values are secrets: never a literal in the repository.
SECRET_SETTINGS = {"AUTH_CODE_PEPPER", "CONTACTS_HASH_KEY", "ZHADUI_CURSOR_KEY", "AUTH_OIDC_CLIENT_SECRET"}
PRODUCTION_SECRETS = {"auth": "AUTH_CODE_PEPPER", "contacts": "CONTACTS_HASH_KEY", "zhadui": "ZHADUI_CURSOR_KEY"}
CRD_SCHEMAS = Path(__file__).parent / "schemas"


def workloads(objects) -> list[dict[str, Any]]:
    return of_kind(objects, "Deployment") + of_kind(objects, "StatefulSet")


def containers(objects):
    for workload in workloads(objects):
        for container in workload["spec"]["template"]["spec"]["containers"]:
            yield workload, container


def app_container(objects, app: str) -> dict[str, Any]:
    return named(objects, "Deployment", app)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_overlay_renders(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap", "PodDisruptionBudget"} <= kinds
    assert {"HorizontalPodAutoscaler", "NetworkPolicy", "Ingress", "ServiceMonitor", "PrometheusRule"} <= kinds


def _strict(schema: Any) -> Any:
    """Reject unknown fields, as kubernetes-validate --strict does for the built-in kinds."""
    if isinstance(schema, dict):
        schema = {k: _strict(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^(?i)"):  # Go allows inline flags anywhere
            schema["pattern"] = "(?i)^" + pattern[len("^(?i)") :]
    elif isinstance(schema, list):
        schema = [_strict(v) for v in schema]
    return schema


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    for path in CRD_SCHEMAS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text())
        if crd["spec"]["names"]["kind"] == kind:
            schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])
            schema["properties"]["metadata"] = {"type": "object"}
            return _strict(schema)
    raise AssertionError(f"no CRD schema for {kind} in {CRD_SCHEMAS}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_strictly(overlay: str) -> None:
    failures = []
    for obj in render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            if obj["apiVersion"].startswith("monitoring.coreos.com/"):
                jsonschema.validate(obj, crd_schema(obj["kind"]))
            else:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            failures.append(f"{name}: {exc.message}")
    assert not failures, "\n".join(failures)


def test_strict_validation_rejects_an_unknown_field() -> None:
    # The check above has teeth: a typo'd field is refused, for a built-in kind and for a CRD.
    deployment = copy.deepcopy(named(render("dev"), "Deployment", "auth"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)
    rule = copy.deepcopy(named(render("dev"), "PrometheusRule", "laiwang"))
    rule["spec"]["groups"][0]["rules"][0]["expression"] = "up"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(rule, crd_schema("PrometheusRule"))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_probes_limits_and_the_restricted_security_context(overlay: str) -> None:
    objects = render(overlay)
    assert workloads(objects)
    for workload, container in containers(objects):
        where = f"{workload['metadata']['name']}/{container['name']}"
        pod = workload["spec"]["template"]["spec"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert probe in container, f"{where}: no {probe}"
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind]), f"{where}: {kind}"
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and pod["securityContext"]["runAsNonRoot"] is True, where
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"], where
        assert security["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_probe_grpc_health_and_liveness_does_not_depend_on_downstreams(overlay: str) -> None:
    objects = render(overlay)
    for app in SERVICES:
        container = app_container(objects, app)
        port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
        readiness, liveness = container["readinessProbe"]["grpc"], container["livenessProbe"]["grpc"]
        assert readiness == {"port": port}, app  # the overall status: follows dependencies and shutdown
        # "liveness" is SERVING whatever the dependencies do (plumbing/grpc_server.py).
        assert liveness == {"port": port, "service": "liveness"}, app
        assert container["startupProbe"]["grpc"] == liveness, app
    gateway = app_container(objects, "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert gateway["startupProbe"]["httpGet"]["path"] == "/livez"


def probe_budget(probe: dict[str, Any]) -> int:
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_startup_probes_allow_for_the_index_loads_of_contacts_and_zhadui(overlay: str) -> None:
    objects = render(overlay)
    # About 27 s at 1M users (bench/README.md); twice that, with room, before a restart.
    for app in ("contacts", "zhadui"):
        assert probe_budget(app_container(objects, app)["startupProbe"]) >= 60, app
    for app in PROCESSES:
        assert probe_budget(app_container(objects, app)["startupProbe"]) >= 30, app


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_prestop_and_shutdown_grace(overlay: str) -> None:
    objects = render(overlay)
    for app in PROCESSES:
        deployment = named(objects, "Deployment", app)
        container = app_container(objects, app)
        grace = float(config_map_env(objects, container)["SHUTDOWN_GRACE_SECONDS"])
        pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        assert pre_stop >= 3, app  # endpoints and ingresses need a moment to drop the pod
        # preStop + in-flight drain + stopping consumers/outbox/NATS (up to ~10 s) before SIGKILL.
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= pre_stop + grace + 10, app
        assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0, app


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_its_service_account_service_pdb_and_spread(overlay: str) -> None:
    objects = render(overlay)
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        template = deployment["spec"]["template"]
        labels = template["metadata"]["labels"]
        named(objects, "ServiceAccount", template["spec"]["serviceAccountName"])
        assert any(selects({"matchLabels": s["spec"]["selector"]}, labels) for s in of_kind(objects, "Service")), name
        pdbs = [p for p in of_kind(objects, "PodDisruptionBudget") if selects(p["spec"]["selector"], labels)]
        assert len(pdbs) == 1, name
        spread = template["spec"]["topologySpreadConstraints"]
        assert "kubernetes.io/hostname" in {c["topologyKey"] for c in spread}, name
        assert all(selects(c["labelSelector"], labels) for c in spread), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpas_scale_the_gateway_and_messaging(overlay: str) -> None:
    targets = {h["spec"]["scaleTargetRef"]["name"] for h in of_kind(render(overlay), "HorizontalPodAutoscaler")}
    assert targets == {"gateway", "messaging"}


def _policies_for(objects, labels: dict[str, str]) -> list[dict[str, Any]]:
    return [p for p in of_kind(objects, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]


def _peer_matches(peer: dict[str, Any], labels: dict[str, str]) -> bool:
    # A same-namespace pod selector (no namespaceSelector, no ipBlock) naming these labels.
    return set(peer) == {"podSelector"} and bool(peer["podSelector"]) and selects(peer["podSelector"], labels)


def allowed(objects, source: str, target: str, port: int) -> bool:
    """Would the NetworkPolicies let pods of `source` open `port` on pods of `target`?"""
    source_labels = named(objects, "Deployment", source)["spec"]["template"]["metadata"]["labels"]
    target_labels = named(objects, "Deployment", target)["spec"]["template"]["metadata"]["labels"]
    egress = any(
        any(_peer_matches(peer, target_labels) for peer in rule.get("to", []))
        and any(p["port"] == port for p in rule.get("ports", []))
        for policy in _policies_for(objects, source_labels)
        for rule in policy["spec"].get("egress", [])
    )
    ingress = any(
        any(_peer_matches(peer, source_labels) for peer in rule.get("from", []))
        and any(p["port"] == port for p in rule.get("ports", []))
        for policy in _policies_for(objects, target_labels)
        for rule in policy["spec"].get("ingress", [])
    )
    return egress and ingress


def address_settings_read_by(app: str) -> set[str]:
    """The *_ADDR settings the code of `app` reads (the calls it makes to other services)."""
    folder = ROOT / ("gateway" if app == "gateway" else f"services/{app.replace('-', '_')}")
    text = "\n".join(p.read_text() for p in folder.rglob("*.py"))
    names = set(re.findall(r'env\.address\("([A-Z_]+_ADDR)"', text))
    if app == "gateway":  # gateway/config.py builds the names from SERVICES
        names |= {f"{s.upper().replace('-', '_')}_ADDR" for s in SERVICES}
    return names


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_exactly_the_calls_the_code_makes(overlay: str) -> None:
    objects = render(overlay)
    deny = named(objects, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    services = {s["metadata"]["name"]: s for s in of_kind(objects, "Service")}
    calls: set[tuple[str, str, int]] = set()
    for app in PROCESSES:
        env = config_map_env(objects, app_container(objects, app))
        for setting in address_settings_read_by(app):
            host, port = env[setting].rsplit(":", 1)  # every address the code reads is configured
            assert host in services, f"{app} {setting}={env[setting]}: no such Service"
            calls.add((app, host, int(port)))
    assert {(s, t) for s, t, _ in calls} == {
        *(("gateway", s) for s in SERVICES),
        ("contacts", "auth"),
        ("zhadui", "messaging"),
        ("open-platform", "messaging"),  # subscription rooms
    }
    for source, target, port in calls:
        assert allowed(objects, source, target, port), f"{source} -> {target}:{port} is blocked"
    grpc_ports = {t: p for _, t, p in calls}
    for source in PROCESSES:
        for target, port in grpc_ports.items():
            if source != target and not any(c[:2] == (source, target) for c in calls):
                assert not allowed(objects, source, target, port), f"{source} -> {target} is allowed but never made"
    for app in PROCESSES:
        labels = named(objects, "Deployment", app)["spec"]["template"]["metadata"]["labels"]
        assert [p for p in _policies_for(objects, labels) if p["spec"]["podSelector"]], f"{app}: no own policy"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_auth_messaging_and_open_platform_reach_outside_the_cluster_and_only_public_https(overlay: str) -> None:
    # auth: the OIDC provider; messaging: push gateways (docs/push.md); open-platform: partner apps'
    # webhooks (docs/open_platform.md). Never the private ranges.
    objects = render(overlay)
    outside: dict[str, list[dict[str, Any]]] = {}
    for app in PROCESSES:
        labels = named(objects, "Deployment", app)["spec"]["template"]["metadata"]["labels"]
        for policy in _policies_for(objects, labels):
            for rule in policy["spec"].get("egress", []):
                if any("ipBlock" in peer for peer in rule.get("to", [])):
                    outside.setdefault(app, []).append(rule)
    assert set(outside) == {"auth", "messaging", "open-platform"}
    for rules in outside.values():
        for rule in rules:
            assert [p["port"] for p in rule["ports"]] == [443]
            for peer in rule["to"]:
                assert set(peer["ipBlock"]["except"]) >= {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}
    messaging = named(objects, "ConfigMap", _config_map_name(objects, "messaging"))["data"]
    assert messaging.get("PUSH_ALLOWED_NETWORKS", "") == ""  # no private pusher URL unless an operator says so


def _config_map_name(objects, app: str) -> str:
    container = app_container(objects, app)
    return next(ref["configMapRef"]["name"] for ref in container.get("envFrom", []) if "configMapRef" in ref)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_and_the_ingress_reach_only_their_ports(overlay: str) -> None:
    objects = render(overlay)
    for app in PROCESSES:
        container = app_container(objects, app)
        metrics_port = next(p["containerPort"] for p in container["ports"] if p["name"] in ("metrics", "http"))
        labels = named(objects, "Deployment", app)["spec"]["template"]["metadata"]["labels"]
        from_monitoring = [
            port["port"]
            for policy in _policies_for(objects, labels)
            for rule in policy["spec"].get("ingress", [])
            if any(
                peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name")
                == "monitoring"
                for peer in rule["from"]
            )
            for port in rule["ports"]
        ]
        assert from_monitoring == [metrics_port], app
    ingress = named(objects, "Ingress", "gateway")
    paths = {p["path"] for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]}
    assert paths == {"/_matrix", "/_laiwang"}  # not /metrics, /healthz
    # Longer than the longest /sync long-poll the gateway holds.
    from gateway.routes.sync import MAX_TIMEOUT_MS

    assert int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > (
        MAX_TIMEOUT_MS / 1000 + 10
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_value_is_in_the_repository(overlay: str) -> None:
    objects = render(overlay)
    assert not of_kind(objects, "Secret"), "Secrets are created on the cluster, never rendered from the repository"
    credentials = re.compile(r"://[^/@\s]+:[^/@\s]+@")
    for config in of_kind(objects, "ConfigMap"):
        for key, value in config.get("data", {}).items():
            assert key not in SECRET_SETTINGS, f"{config['metadata']['name']}: {key} inlined"
            assert not credentials.search(value), f"{config['metadata']['name']}: credentials in {key}"
    for workload, container in containers(objects):
        for item in container.get("env", []):
            if item["name"] in SECRET_SETTINGS or item["name"] in ("MONGO_URI", "NATS_URL"):
                assert "secretKeyRef" in item.get("valueFrom", {}), f"{workload['metadata']['name']}: {item['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for workload, container in containers(render(overlay)):
        image = container["image"]
        tag = image.rsplit("/", 1)[-1].partition(":")[2]
        assert "@sha256:" in image or (tag and tag != "latest"), f"{workload['metadata']['name']}: {image}"


def test_dev_is_one_replica_each_with_in_cluster_nats_and_mongodb() -> None:
    objects = render("dev")
    assert {d["metadata"]["name"]: d["spec"]["replicas"] for d in of_kind(objects, "Deployment")} == dict.fromkeys(
        PROCESSES, 1
    )
    assert {s["metadata"]["name"] for s in of_kind(objects, "StatefulSet")} == {"nats", "mongodb"}
    assert "--jetstream" in named(objects, "StatefulSet", "nats")["spec"]["template"]["spec"]["containers"][0]["args"]
    mongo = named(objects, "StatefulSet", "mongodb")["spec"]["template"]["spec"]["containers"][0]
    assert "--replSet" in mongo["args"]  # transactions need a replica set
    env = config_map_env(objects, app_container(objects, "messaging"))
    assert env["NATS_URL"] == "nats://nats:4222"
    assert env["MONGO_URI"].startswith("mongodb://mongodb-0.mongodb:27017/")


def test_prod_runs_two_or_more_of_everything_on_r3_streams_with_the_production_secrets() -> None:
    objects = render("prod")
    assert all(d["spec"]["replicas"] >= 2 for d in of_kind(objects, "Deployment"))
    assert all(h["spec"]["minReplicas"] >= 2 for h in of_kind(objects, "HorizontalPodAutoscaler"))
    assert not of_kind(objects, "StatefulSet")  # NATS and MongoDB are clusters run by their operators
    for app in PROCESSES:
        container = app_container(objects, app)
        env = config_map_env(objects, container)
        refs = {i["name"]: i["valueFrom"]["secretKeyRef"] for i in container["env"] if "valueFrom" in i}
        assert refs["NATS_URL"]["name"] == "laiwang-connections" and not refs["NATS_URL"].get("optional")
        if app != "gateway":
            assert refs["MONGO_URI"]["name"] == "laiwang-connections" and not refs["MONGO_URI"].get("optional")
            assert env["STREAM_REPLICAS"] == "3"
        if app in PRODUCTION_SECRETS:
            assert refs[PRODUCTION_SECRETS[app]]["optional"] is False, app
    assert config_map_env(objects, app_container(objects, "contacts"))["CONTACTS_REQUIRE_HASH_KEY"] == "true"


def test_alerts_refer_to_metrics_the_code_exports() -> None:
    from prometheus_client import REGISTRY

    import gateway.app  # these register the metrics
    import gateway.routes.sync  # noqa: F401
    import plumbing.metrics  # noqa: F401
    import services.messaging.push_delivery  # noqa: F401

    exported = set(REGISTRY._names_to_collectors)
    rule = named(render("prod"), "PrometheusRule", "laiwang")
    alerts = {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}
    for required in ("ErrorRate", "LatencyP99", "ConsumerLag", "OutboxBacklog"):
        assert any(required in name for name in alerts), required
    for name, expr in alerts.items():
        # Label matchers and grouping labels out; what remains with an underscore is a metric or a function.
        bare = re.sub(r"\{[^}]*\}|\bby\s*\([^)]*\)|\[[^\]]*\]", " ", expr)
        metrics = set(re.findall(r"\b[a-z]+_[a-z0-9_]+\b", bare)) - {"histogram_quantile", "clamp_min"}
        assert metrics, name
        assert metrics <= exported, f"{name}: {metrics - exported} not exported"


def test_service_monitor_scrapes_named_ports_of_the_services() -> None:
    objects = render("prod")
    monitor = named(objects, "ServiceMonitor", "laiwang")
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    for app in PROCESSES:
        service = named(objects, "Service", app)
        assert selects(monitor["spec"]["selector"], service["metadata"]["labels"]), app
        assert ports & {p["name"] for p in service["spec"]["ports"]}, app
