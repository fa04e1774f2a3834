# Container images (images/*/Dockerfile), built from the repository root.
#   make images                       build nasagent-agent and nasagent-trainer, tagged $(REGISTRY)/...:$(TAG)
#   make images-push                  build, then push both
#   make images-lock                  regenerate requirements/{agent,trainer}.lock from pyproject.toml
# REGISTRY defaults to ghcr.io/nasagent and TAG to the package version in pyproject.toml: with both
# defaults, the pushed images are exactly the pipeline's default agent_image and trainer_image
# (components/__init__.py; tests/test_images.py ties them). Push your own build elsewhere with
# e.g. make images-push REGISTRY=ghcr.io/acme (and pass agent_image/trainer_image to the run);
# a development build can carry the commit: TAG=$$(git rev-parse --short=12 HEAD). Never latest.
DOCKER ?= docker
REGISTRY ?= ghcr.io/nasagent
ifeq ($(origin TAG),undefined)
TAG := $(shell sed -n 's/^version = "\(.*\)"$$/\1/p' pyproject.toml)
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
	@test -n "$(REGISTRY)" || { echo "make images-push: set REGISTRY, e.g. make images-push REGISTRY=ghcr.io/acme" >&2; exit 1; }
	@test -n "$(TAG)" && test "$(TAG)" != latest || { echo "make images-push: TAG must name one build (a version or a commit), got '$(TAG)'" >&2; exit 1; }
	$(MAKE) --no-print-directory images REGISTRY=$(REGISTRY) TAG=$(TAG)
	$(DOCKER) push $(AGENT_IMAGE)
	$(DOCKER) push $(TRAINER_IMAGE)

images-lock: $(STAMP)
	$(BIN)/python images/lock.py
