"""A stand-in for the original GVirtuS-KAI webhook's serving stack, for ``bench/webhook.py``.

Written for this benchmark, not taken from the original: it reproduces that webhook's
architecture, which is what the comparison is about. A Flask app on Flask's built-in development
server over TLS (``app.run`` with an ``ssl_context``), logging at DEBUG every review and every
answer pretty-printed as indented JSON, and answering with a JSON Patch that wraps the first
container's command in a ``sed`` that points the GVirtuS config at the backend.

Usage: ``flask_webhook.py PORT CERT KEY BACKEND_IP`` (log lines go to stderr).
"""

from __future__ import annotations

import base64
import json
import logging
import sys
from typing import Any

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

app = Flask(__name__)
log = logging.getLogger("baseline")
BACKEND = {"address": "", "port": "34567"}


def sed_patch(pod: dict[str, Any]) -> list[dict[str, Any]]:
    container = pod["spec"]["containers"][0]
    original = " ".join(container.get("command", []) + container.get("args", []))
    rewrite = (
        f'sed -i \'s/"server_address": "[^"]*"/"server_address": "{BACKEND["address"]}"/\' '
        f"/usr/local/gvirtus/etc/properties.json && exec {original}"
    )
    operation = "replace" if "command" in container else "add"
    return [
        {"op": operation, "path": "/spec/containers/0/command", "value": ["/bin/sh", "-c", rewrite]}
    ]


@app.route("/mutate", methods=["POST"])
def mutate() -> ResponseReturnValue:
    review = request.get_json()
    log.debug("admission review received:\n%s", json.dumps(review, indent=2))
    patch = json.dumps(sed_patch(review["request"]["object"]))
    answer = {
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {
            "uid": review["request"]["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(patch.encode()).decode(),
        },
    }
    log.debug("admission review answered:\n%s", json.dumps(answer, indent=2))
    return jsonify(answer)


def main() -> None:
    port, cert, key, BACKEND["address"] = sys.argv[1:5]
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
    app.run(host="127.0.0.1", port=int(port), ssl_context=(cert, key))


if __name__ == "__main__":
    main()
