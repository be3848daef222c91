"""Kubelet device plugin API v1beta1: ``api.proto`` and the stubs generated from it.

``api_pb2`` (messages, typed by ``api_pb2.pyi``) and ``api_pb2_grpc`` (service stubs) are generated
by ``services/device-plugin/generate_stubs.py``; do not edit them by hand.
"""

API_VERSION = "v1beta1"
HEALTHY = "Healthy"
