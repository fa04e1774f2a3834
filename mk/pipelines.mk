# Kubeflow pipelines (pipelines/, built from components/).
#   make pipelines         compile pipelines/search_pipeline.py into pipelines/search_pipeline.yaml (committed;
#                          tests/test_pipeline.py fails while the committed file is stale)
#   make pipeline-local    run that compiled pipeline end to end with kfp.local on this machine: digits, trials as
#                          worker processes, the embedded PostgreSQL under NASAGENT_HOME, file artifacts under
#                          $(PIPELINE_LOCAL)/artifacts. Extra pipeline arguments: make pipeline-local ARGS="trials=40"
PIPELINE_LOCAL ?= $(CURDIR)/.nasagent/pipeline-local
PIPELINE_YAML := pipelines/search_pipeline.yaml
ARGS ?=

.PHONY: pipelines pipeline-local

pipelines: $(STAMP)
	$(BIN)/python -m pipelines.search_pipeline compile --out $(PIPELINE_YAML)

$(PIPELINE_YAML): pipelines/search_pipeline.py $(wildcard components/*.py) | $(STAMP)
	$(BIN)/python -m pipelines.search_pipeline compile --out $(PIPELINE_YAML)

pipeline-local: $(STAMP) $(PIPELINE_YAML)
	mkdir -p $(PIPELINE_LOCAL)
	NASAGENT_HOME=$${NASAGENT_HOME:-$(CURDIR)/.nasagent} $(BIN)/python -m pipelines.search_pipeline local \
		--root $(PIPELINE_LOCAL)/runs --bucket file://$(PIPELINE_LOCAL)/artifacts $(ARGS)
