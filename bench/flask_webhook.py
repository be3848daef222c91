"""A stand-in for the original GVirtuS-KAI webhook's serving stack, for ``bench/webhook.py``.

Written for this benchmark, not taken from the original: it reproduces that webhook's
architecture, which is what the comparison is about. A Flask app on Flask's built-in development
server over TLS (``app.run`` with an ``ssl_context``), logging at DEBUG (timestamped lines) what it
does for each review, with the review, the patch and the answer pretty-printed as indented JSON,
and answering with a JSON Patch that runs the first container's command under ``/bin/sh -c``
after a ``sed`` that points the GVirtuS config at the backend.

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
    log.debug("wrapping the first container's command: %s", original)
    rewrite = (
        f'sed -i \'s/"server_address": "[^"]*"/"server_address": "{BACKEND["address"]}"/\' '
        f"/usr/local/gvirtus/etc/properties.json && exec {original}"
    )
    return [
        {"op": "replace", "path": "/spec/containers/0/command", "value": ["/bin/sh", "-c"]},
        {"op": "replace", "path": "/spec/containers/0/args", "value": [rewrite]},
    ]


@app.route("/mutate", methods=["POST"])
def mutate() -> ResponseReturnValue:
    log.debug("review request arrived")
    review = request.get_json()
    log.debug("the review, as received:")
    log.debug(json.dumps(review, indent=2))
    pod = review["request"]["object"]
    log.debug("mutating pod %s", pod["metadata"].get("name", "?"))
    operations = sed_patch(pod)
    log.debug("the patch:")
    log.debug(json.dumps(operations, indent=2))
    answer = {
        "apiVersion": review["apiVersion"],
        "kind": "AdmissionReview",
        "response": {
            "uid": review["request"]["uid"],
            "allowed": True,
            "patchType": "JSONPatch",
            "patch": base64.b64encode(json.dumps(operations).encode()).decode(),
        },
    }
    log.debug("answering (allowed):")
    log.debug(json.dumps(answer, indent=2))
    return jsonify(answer)


def main() -> None:
    port, cert, key, BACKEND["address"] = sys.argv[1:5]
    logging.basicConfig(
        level=logging.DEBUG, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    app.run(host="127.0.0.1", port=int(port), ssl_context=(cert, key))


if __name__ == "__main__":
    main()
