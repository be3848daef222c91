"""GVirtuS-KAI device plugin: virtual GPU slots for the kubelet of a GPU-less node."""

import os

# grpc's C core writes its own INFO lines as plain text to stderr (for instance "Got goaway" when a
# kubelet restarts under an open connection), which breaks our one-JSON-object-per-line logs. It
# reads this variable when it initialises; an explicit setting in the environment still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
