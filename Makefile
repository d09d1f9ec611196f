# SharpML developer entry points. Every target installs what it needs, so a fresh clone works.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export SHARPML_DATA_DIR ?= $(CURDIR)/.data

.PHONY: demo test fuzz soak lint venv viewer clean deps-core deps-test k8s-tools helm s3-tools chart-tools chart-values cluster-up cluster-down s3-up s3-down

## venv: the project's virtual environment with every extra installed (re-run when pyproject changes).
## The `train` extra (torch + its CUDA libraries: 2.9 GB of wheels) comes from a wheelhouse under
## ~/.cache/sharpml/wheels: the registry's responses here carry no cache headers, so pip's own cache
## (~/.cache/pip) keeps nothing. `pip download` fills it once (later runs only read index pages), and the
## extra is installed from it offline; the rest installs as usual.
WHEELS ?= $(HOME)/.cache/sharpml/wheels
$(BIN)/sharpml: pyproject.toml hack/requirements.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip download -q --dest $(WHEELS) $$($(PYTHON) hack/requirements.py train)
	$(BIN)/pip install -q --no-index --find-links $(WHEELS) $$($(PYTHON) hack/requirements.py train)
	$(BIN)/pip install -q -e '.[cli,train,runpod,dev,cluster,api,operator]'
	@touch $@

venv: $(BIN)/sharpml

## demo: the main job on the embedded default: render sample photos, run intake -> SfM -> preview splat
demo: deps-core venv
	$(BIN)/sharpml demo

## test: the whole test suite (what CI runs); builds the control plane binaries, the S3 server and the
## chart's tools first (cached: a no-op)
test: deps-test venv viewer k8s-tools s3-tools chart-tools
	$(BIN)/ruff check .
	$(BIN)/pytest

## fuzz: schemathesis far beyond the suite's short, deterministic run: FUZZ_EXAMPLES generated requests
## per operation (besides schemathesis' explicit and coverage cases), every operation, by-id routes on
## real jobs, a random seed (printed; FUZZ_SEED=N replays a run). Prints requests, operations, time.
FUZZ_EXAMPLES ?= 2000
fuzz: deps-test venv k8s-tools
	@seed=$${FUZZ_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; log=$$(mktemp); start=$$(date +%s); \
	echo "make fuzz: $(FUZZ_EXAMPLES) generated examples per operation, seed $$seed"; \
	SHARPML_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) SHARPML_FUZZ_SEED=$$seed SHARPML_FUZZ_LOG=$$log \
	  $(BIN)/pytest tests/api/test_openapi_fuzz.py -p no:cacheprovider -q; rc=$$?; \
	echo "make fuzz: $$(wc -l < $$log) requests over $$(cut -f1 $$log | sort -u | wc -l) operations" \
	  "in $$(( $$(date +%s) - start )) s, seed $$seed, exit $$rc; requests by operation and status:"; \
	cut -f1,2 $$log | sort | uniq -c; rm -f $$log; exit $$rc

## soak: tests/operator/test_soak.py far beyond the suite's short run: SOAK_UPLOADERS uploaders post photo
## sets for SOAK_SECONDS while the API and the operator are SIGKILLed and restarted every 15-45 s, then it
## waits for every job to finish and every leftover to be swept. A random seed (printed; SOAK_SEED=N
## replays the kill schedule); the figures go to benchmarks/results/soak.json and a summary line.
SOAK_UPLOADERS ?= 8
SOAK_SECONDS ?= 600
soak: deps-test venv k8s-tools
	@seed=$${SOAK_SEED:-$$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}; start=$$(date +%s); \
	echo "make soak: $(SOAK_UPLOADERS) uploaders for $(SOAK_SECONDS) s, seed $$seed, load $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	SHARPML_SOAK_UPLOADERS=$(SOAK_UPLOADERS) SHARPML_SOAK_SECONDS=$(SOAK_SECONDS) SHARPML_SOAK_SEED=$$seed \
	SHARPML_SOAK_RESULT=benchmarks/results/soak.json \
	SHARPML_SOAK_COMMAND="make soak SOAK_UPLOADERS=$(SOAK_UPLOADERS) SOAK_SECONDS=$(SOAK_SECONDS) SOAK_SEED=$$seed" \
	  $(BIN)/pytest tests/operator/test_soak.py -p no:cacheprovider -q; rc=$$?; \
	echo "make soak: $$(( $$(date +%s) - start )) s, seed $$seed, exit $$rc, load $$(cut -d' ' -f1-3 /proc/loadavg)"; \
	$(BIN)/python -c 'import json, os, sys; p = "benchmarks/results/soak.json"; \
	  print(json.load(open(p))["summary"] if os.path.getmtime(p) >= int(sys.argv[1]) else "no result written")' $$start; \
	exit $$rc

## viewer: the browser viewer (viewer/, npm: Spark + three.js, esbuild) built into the API's static files,
## api/sharpml_api/static/viewer/; `npm ci` with its cache under ~/.cache/sharpml/npm. A no-op when
## viewer/package-lock.json, build.mjs and src/ have not changed (hack/build-viewer.sh)
viewer:
	hack/system-deps.sh viewer
	hack/build-viewer.sh

## deps-core / deps-test: Debian packages pip cannot bring, installed only where missing (hack/system-deps.sh)
deps-core:
	hack/system-deps.sh core

deps-test:
	hack/system-deps.sh test

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .data .pytest_cache .ruff_cache viewer/node_modules viewer/.build-stamp api/sharpml_api/static/viewer

## k8s-tools: kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd (pinned in
## hack/k8s-tools/go.mod), built once into ~/.cache/sharpml/k8s-<version>/; rebuilt only when the pin changes
k8s-tools:
	hack/k8s-tools/build.sh

## s3-tools: versitygw, the S3 server of the storage tests (pinned in hack/s3/go.mod), built once into
## ~/.cache/sharpml/versitygw-<version>/; rebuilt only when the pin changes
s3-tools:
	hack/s3/build.sh

## helm: helm for chart tests (own module, hack/k8s-tools/helm/go.mod), built on demand into the same cache
helm:
	hack/k8s-tools/build.sh helm

## chart-tools: what tests/chart needs, pinned and cached like the rest: checkov in its own venv (hack/checkov.txt:
## it pins boto3 and packaging, which must not move .venv), helm, kubeconform, promtool (each its
## own module under hack/k8s-tools/) and the Prometheus Operator's CRDs; a no-op once built
CHECKOV_VENV = $(HOME)/.cache/sharpml/venvs/checkov-$(shell sha256sum hack/checkov.txt | cut -c1-12)
chart-tools: $(CHECKOV_VENV)/bin/checkov
	hack/k8s-tools/build.sh helm
	hack/k8s-tools/build.sh kubeconform
	hack/k8s-tools/build.sh promtool
	hack/k8s-tools/build.sh monitoring-crds

# No prerequisite: the folder's name is the hash of hack/checkov.txt, so a change makes a new one, while a
# fresh clone's newer file date would rebuild the venv on every CI run (it did: minutes each time).
$(CHECKOV_VENV)/bin/checkov:
	rm -rf $(CHECKOV_VENV) && $(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q -r hack/checkov.txt
	@touch $@

## chart-values: regenerate the chart's settings (values.yaml block, values.schema.json) from sharpml/settings.py
chart-values:
	$(PYTHON) hack/chart_settings.py --write

## cluster-up / cluster-down: the development control plane on 127.0.0.1 (.cluster/kubeconfig, .cluster/bin/kubectl)
cluster-up: k8s-tools
	$(PYTHON) hack/devcluster.py up

cluster-down:
	$(PYTHON) hack/devcluster.py down

## s3-up / s3-down: versitygw over TLS on 127.0.0.1 (.s3/); `up` prints the SHARPML_S3_* variables to export
s3-up: s3-tools venv
	$(BIN)/python hack/s3server.py up

s3-down:
	$(PYTHON) hack/s3server.py down
