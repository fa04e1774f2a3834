# Kubeflow pipelines (pipelines/, built from components/).
#   make pipelines         compile pipelines/search_pipeline.py once per supported KFP backend (committed;
#                          tests/test_pipeline.py fails while a committed file is stale):
#                            pipelines/search_pipeline.yaml           KFP 2.16, Kubeflow 26.03
#                            pipelines/search_pipeline.kfp-2.15.yaml  KFP 2.15, Kubeflow 1.11
#                            pipelines/search_pipeline.kfp-2.5.yaml   KFP 2.5,  Kubeflow 1.10
#   make pipeline-local    run the compiled search_pipeline.yaml end to end with kfp.local on this machine:
#                          digits, trials as worker processes, the embedded PostgreSQL under NASAGENT_HOME,
#                          file artifacts under $(PIPELINE_LOCAL)/artifacts. Extra pipeline arguments:
#                          make pipeline-local ARGS="trials=40"
PIPELINE_LOCAL ?= $(CURDIR)/.nasagent/pipeline-local
PIPELINE_YAMLS := pipelines/search_pipeline.yaml pipelines/search_pipeline.kfp-2.15.yaml pipelines/search_pipeline.kfp-2.5.yaml
ARGS ?=

.PHONY: pipelines pipeline-local

pipelines: $(STAMP)
	$(BIN)/python -m pipelines.search_pipeline compile

$(PIPELINE_YAMLS) &: pipelines/search_pipeline.py $(wildcard components/*.py) nasagent/kubeflow.py | $(STAMP)
	$(BIN)/python -m pipelines.search_pipeline compile

pipeline-local: $(STAMP) $(PIPELINE_YAMLS)
	mkdir -p $(PIPELINE_LOCAL)
	NASAGENT_HOME=$${NASAGENT_HOME:-$(CURDIR)/.nasagent} $(BIN)/python -m pipelines.search_pipeline local \
		--root $(PIPELINE_LOCAL)/runs --bucket file://$(PIPELINE_LOCAL)/artifacts $(ARGS)
