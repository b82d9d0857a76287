"""Validates Kubernetes manifests offline: core kinds against Kubernetes' OpenAPI schemas
(PyPI kubernetes-validate, strict: unknown fields fail), Istio kinds against the schemas of
Istio's CRDs (npm @kubernetes-models/istio, via validate-istio.mjs). A kind with no schema,
such as a removed API version, fails too.

    kubectl kustomize deploy/k8s/overlays/istio | python validate.py [--k8s 1.30.0,1.37.0] -

Run it with the Python of the tools venv that deploy/local/install-deps.sh makes
(VMPOD_K8S_TOOLS, default /opt/vmpod-tools). Prints one line per object; exit 1 on any failure.
"""

import argparse
import json
import os
import subprocess
import sys

import kubernetes_validate
import yaml

ISTIO_GROUPS = ("networking.istio.io", "security.istio.io", "telemetry.istio.io")
HERE = os.path.dirname(os.path.abspath(__file__))


def name_of(doc):
    return "%s %s/%s" % (doc.get("apiVersion"), doc.get("kind"), (doc.get("metadata") or {}).get("name"))


def validate_core(doc, versions):
    problems = []
    for version in versions:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            problems.append("no schema for this apiVersion/kind in Kubernetes %s" % version)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problems.append("Kubernetes %s: %s: %s" % (version, path or "(top)", e.message))
    return problems


def validate_istio(docs):
    """One node process for all Istio objects; returns a list of problems per object."""
    if not docs:
        return []
    tools = os.environ.get("VMPOD_K8S_TOOLS", "/opt/vmpod-tools")
    proc = subprocess.run(
        ["node", os.path.join(HERE, "validate-istio.mjs"), os.path.join(tools, "node")],
        input=json.dumps(docs),
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit("validate-istio.mjs failed: %s%s" % (proc.stdout, proc.stderr))
    return json.loads(proc.stdout)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--k8s", default="1.30.0,%s" % kubernetes_validate.latest_version())
    parser.add_argument("file", help="multi-document YAML, - for stdin")
    args = parser.parse_args()
    text = sys.stdin.read() if args.file == "-" else open(args.file).read()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    if not docs:
        print("FAIL no objects in the input")
        return 1
    versions = args.k8s.split(",")
    istio = [d for d in docs if str(d.get("apiVersion", "")).split("/")[0] in ISTIO_GROUPS]
    results = {id(d): p for d, p in zip(istio, validate_istio(istio))}
    failed = 0
    for doc in docs:
        problems = results[id(doc)] if id(doc) in results else validate_core(doc, versions)
        if problems:
            failed += 1
            for p in problems:
                print("FAIL %s: %s" % (name_of(doc), p))
        else:
            schema = "Istio CRD" if id(doc) in results else "Kubernetes " + " and ".join(versions)
            print("ok   %s (%s)" % (name_of(doc), schema))
    print("%d objects, %d failed" % (len(docs), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
