# GVirtuS-KAI developer entry points. Every target works from a fresh clone: it builds what it needs.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
BIN    := $(CURDIR)/$(VENV)/bin
TOOLS  := $(CURDIR)/.tools/bin
export PATH := $(TOOLS):$(BIN):$(PATH)

SERVICES   := services/common services/webhook services/labeler services/device-plugin services/controller services/backend-agent
PY_SOURCES := services/common/src services/webhook/src services/labeler/src services/device-plugin/src services/controller/src services/backend-agent/src tests bench demo docs

VENV_STAMP  := $(VENV)/.installed
CHECKOV_VENV := .tools/checkov

# Control plane for the cluster tests, the node agents, helm and kubectl, built from the Go module
# in ci/tools; containerd, its runc shim and the CNI plugins from the module in ci/tools/node (pins
# in their go.mod/go.sum). A binary is rebuilt only when missing or when its pins change.
# envtest convention: binaries already in $(KUBEBUILDER_ASSETS) are used from there, not built.
GO_TOOLS     := ci/tools
GO_PINS      := $(GO_TOOLS)/go.mod $(GO_TOOLS)/go.sum $(GO_TOOLS)/build.sh
NODE_PINS    := $(GO_TOOLS)/node/go.mod $(GO_TOOLS)/node/go.sum $(GO_TOOLS)/build.sh
CLUSTER_BINS := etcd kube-apiserver kube-controller-manager kube-scheduler
ASSET_BINS   := $(if $(KUBEBUILDER_ASSETS),$(notdir $(wildcard $(addprefix $(KUBEBUILDER_ASSETS)/,$(CLUSTER_BINS)))))
GO_BINS      := $(addprefix $(TOOLS)/,$(filter-out $(ASSET_BINS),$(CLUSTER_BINS)) helm kubectl kubelet kube-proxy)
NODE_BINS    := $(addprefix $(TOOLS)/,containerd containerd-shim-runc-v2 ctr cni/bridge cni/host-local cni/loopback cni/portmap)
# Debian packages the real nodes use: runc (containerd's runtime), iptables (kube-proxy), and the
# namespace and network tools the node fixture drives.
NODE_DEBS    := runc iptables iproute2 util-linux curl

.PHONY: help demo test pytest e2e e2e-nodes lint fmt docs bench tools node-debs cluster cluster-down clean constraints images

help: ## list targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

$(VENV_STAMP): constraints.txt requirements/dev.txt $(addsuffix /pyproject.toml,$(SERVICES))
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt \
	  $(addprefix -e ,$(SERVICES)) -r requirements/dev.txt
	touch $@

$(GO_BINS): $(TOOLS)/%: $(GO_PINS)
	$(GO_TOOLS)/build.sh $(TOOLS) $*

$(NODE_BINS): $(TOOLS)/%: $(NODE_PINS)
	$(GO_TOOLS)/build.sh $(TOOLS) $*

node-debs: ## Debian packages of the real nodes, installed when missing
	@missing=$$(for p in $(NODE_DEBS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; fi

$(CHECKOV_VENV)/.installed: requirements/checkov.txt
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements/checkov.txt
	ln -sf $(CURDIR)/$(CHECKOV_VENV)/bin/checkov $(TOOLS)/checkov
	touch $@

tools: $(VENV_STAMP) $(GO_BINS) $(NODE_BINS) node-debs $(CHECKOV_VENV)/.installed ## control plane, node agents, containerd, CNI, helm, kubectl, checkov into .tools/bin
	@helm version --short && kubectl version --client

demo: $(VENV_STAMP) ## the webhook over TLS and DNS mutating the examples/ pods
	$(BIN)/python demo/run.py

test: lint pytest e2e-nodes ## every check and test suite (what CI runs)

# What the real-node tier needs: node binaries, Debian packages and the images.
NODE_TIER := $(VENV_STAMP) $(GO_BINS) $(NODE_BINS) node-debs images

pytest: $(NODE_TIER) $(CHECKOV_VENV)/.installed ## the test suites, real-node tier included (no lint)
	$(BIN)/pytest --ignore=tests/e2e

e2e-nodes: $(NODE_TIER) ## the e2e suite against real nodes brought up (and removed) on this machine
	$(BIN)/python -m tests.node.e2e

cluster: $(NODE_TIER) ## a control plane and real nodes here, with the chart from the working tree
	$(BIN)/python -m tests.node.cluster up --install

cluster-down: $(VENV_STAMP) ## remove everything `make cluster` started
	$(BIN)/python -m tests.node.cluster down

e2e: $(VENV_STAMP) $(TOOLS)/helm $(TOOLS)/kubectl ## end-to-end suite against the cluster in KUBECONFIG (installs the chart)
	$(BIN)/pytest tests/e2e -m e2e -v

lint: $(VENV_STAMP) $(TOOLS)/helm ## ruff, mypy --strict, yamllint, hadolint, actionlint, shellcheck, helm lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy --strict $(PY_SOURCES)
	bash ci/lint-repo.sh

fmt: $(VENV_STAMP) ## format and autofix Python sources
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

docs: $(VENV_STAMP) ## write the settings tables of docs/configuration.md from the Settings classes
	$(BIN)/python docs/settings_tables.py

bench: $(NODE_TIER) ## performance figures of every service next to their targets; fails on a miss
	@command -v wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	@missed=0; for name in webhook mutation labeler device_plugin controller controller_poll backend_agent apiserver nodes; do \
	  $(BIN)/python bench/$$name.py || missed=1; \
	done; exit $$missed

# --- images ---
# The container images of the real-node tests, built with buildah from a Debian-made base (no
# registry, no Docker engine): archives in .tools/images that `ctr images import` takes with their
# names. build.sh rebuilds an image only when the hash of its inputs changed.
images: ## service, stand-in and pause images into .tools/images (archives for containerd)
	ci/images/build.sh
# --- end images ---

constraints: ## re-pin constraints.txt from the current venv
	$(BIN)/pip freeze --exclude-editable | sed '/^-e /d' > constraints.txt.new && mv constraints.txt.new constraints.txt

clean: ## remove the venv, tools and caches
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis .bench .demo
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
