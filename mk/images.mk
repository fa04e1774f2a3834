# Container images (images/*/Dockerfile), built from the repository root.
#   make images                       build nasagent-agent and nasagent-trainer, tagged $(TAG)
#   make images-push REGISTRY=...     build, then push both to $(REGISTRY)
#   make images-lock                  regenerate requirements/{agent,trainer}.lock from pyproject.toml
# REGISTRY is a registry path such as ghcr.io/acme or 123456789.dkr.ecr.eu-west-1.amazonaws.com/ml;
# without it the images are tagged for the local engine only. TAG defaults to the commit.
DOCKER ?= docker
REGISTRY ?=
ifeq ($(origin TAG),undefined)
TAG := $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo dev)
endif
IMAGE_PREFIX := $(if $(REGISTRY),$(REGISTRY:%/=%)/,)
AGENT_IMAGE := $(IMAGE_PREFIX)nasagent-agent:$(TAG)
TRAINER_IMAGE := $(IMAGE_PREFIX)nasagent-trainer:$(TAG)

.PHONY: images images-push images-lock images-engine

# These machines have no Docker engine: say so in one line instead of a docker stack trace.
images-engine:
	@command -v $(DOCKER) >/dev/null 2>&1 || { echo "make images: '$(DOCKER)' not found: building images needs a Docker engine (or DOCKER=podman); none is installed here" >&2; exit 1; }
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make images: '$(DOCKER)' cannot reach a Docker engine (is the daemon running, may you use its socket?)" >&2; exit 1; }

images: images-engine
	$(DOCKER) build -f images/agent/Dockerfile -t $(AGENT_IMAGE) .
	$(DOCKER) build -f images/trainer/Dockerfile -t $(TRAINER_IMAGE) .
	@echo "built $(AGENT_IMAGE) and $(TRAINER_IMAGE)"

images-push:
	@test -n "$(REGISTRY)" || { echo "make images-push: set REGISTRY, e.g. make images-push REGISTRY=ghcr.io/acme TAG=0.1.0" >&2; exit 1; }
	$(MAKE) --no-print-directory images REGISTRY=$(REGISTRY) TAG=$(TAG)
	$(DOCKER) push $(AGENT_IMAGE)
	$(DOCKER) push $(TRAINER_IMAGE)

images-lock: $(STAMP)
	$(BIN)/python images/lock.py
