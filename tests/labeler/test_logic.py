"""The labeler's decisions as pure functions."""

from __future__ import annotations

from gvirtus_kai_labeler.logic import label_patch, missing_labels

from tests.labeler.support import BACKEND, DEFAULTS, FRONTEND


def test_a_node_without_labels_misses_all_of_them() -> None:
    assert missing_labels(None, DEFAULTS) == DEFAULTS


def test_only_absent_keys_are_missing() -> None:
    assert missing_labels({BACKEND: "true"}, DEFAULTS) == {FRONTEND: "true"}


def test_a_present_key_counts_whatever_its_value() -> None:
    assert missing_labels({FRONTEND: "", BACKEND: "no-thanks"}, DEFAULTS) == {}


def test_unrelated_labels_do_not_matter() -> None:
    assert missing_labels({"kubernetes.io/hostname": "n1"}, {FRONTEND: "true"}) == {
        FRONTEND: "true"
    }


def test_the_patch_adds_labels_on_condition_of_the_version_read() -> None:
    assert label_patch({FRONTEND: "true"}, "42") == {
        "metadata": {"resourceVersion": "42", "labels": {FRONTEND: "true"}}
    }
