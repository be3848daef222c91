"""helm test: send a real AdmissionReview to the webhook over verified TLS; fail unless it mutates.

Runs in the webhook image with the Python standard library only.
Usage: webhook-check.py URL ENABLE_LABEL GPU_RESOURCE (--ca-file PATH | --ca-b64 BASE64)
                        [--dns-placement BACKEND_HOST]
The URL host must be a name in the serving certificate, as the API server uses it. When the release
has no placement controller, pods are pinned at admission from the DNS records of BACKEND_HOST, and
a cluster without a ready backend makes the webhook refuse the pod naming that Service: with
--dns-placement that refusal passes too.
"""

import argparse
import base64
import json
import ssl
import sys
import urllib.request
import uuid


def admission_review(uid: str, enable_label: str, gpu_resource: str) -> dict[str, object]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "gvirtus-kai-helm-test", "labels": {enable_label: "true"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": "app:latest",
                    "command": ["/bin/app"],
                    "resources": {"limits": {gpu_resource: "1"}},
                }
            ]
        },
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:helm-test"},
            "object": pod,
            "oldObject": None,
            "dryRun": True,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def tls_context(args: argparse.Namespace) -> ssl.SSLContext:
    # Verify exactly as the API server does: the chart's CA, the Service DNS name.
    if args.ca_b64:
        return ssl.create_default_context(cadata=base64.b64decode(args.ca_b64).decode())
    return ssl.create_default_context(cafile=args.ca_file)


def check(args: argparse.Namespace) -> str:
    """Return "" when the webhook mutated the pod, else what was wrong."""
    uid = str(uuid.uuid4())
    body = json.dumps(admission_review(uid, args.enable_label, args.gpu_resource)).encode()
    request = urllib.request.Request(  # noqa: S310 - the URL is an https URL from the chart
        args.url,
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = tls_context(args)
    with urllib.request.urlopen(request, timeout=args.timeout, context=context) as reply:  # noqa: S310
        review = json.load(reply)
    response = review.get("response") or {}
    if response.get("uid") != uid:
        return f"response uid {response.get('uid')!r} does not echo request uid {uid!r}"
    if response.get("allowed") is not True:
        message = str((response.get("status") or {}).get("message", ""))
        if args.dns_placement and args.dns_placement in message:
            print(f"webhook refused the pod, no backend behind {args.dns_placement} yet: {message}")
            return ""
        return f"pod not allowed: {response.get('status')}"
    if response.get("patchType") != "JSONPatch" or not response.get("patch"):
        return "allowed but no JSONPatch: the webhook did not mutate the pod"
    patch = json.loads(base64.b64decode(response["patch"]))
    if not isinstance(patch, list) or not patch:
        return f"patch is not a non-empty JSON Patch list: {patch!r}"
    print(f"webhook mutated the pod with {len(patch)} JSON Patch operations:")
    for op in patch:
        print(f"  {op.get('op')} {op.get('path')}")
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("enable_label")
    parser.add_argument("gpu_resource")
    ca = parser.add_mutually_exclusive_group(required=True)
    ca.add_argument("--ca-file")
    ca.add_argument("--ca-b64")
    parser.add_argument("--dns-placement", metavar="BACKEND_HOST")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    try:
        problem = check(args)
    except (OSError, ValueError) as exc:  # TLS, connection, HTTP and JSON errors
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"FAIL: {problem}", file=sys.stderr)
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
