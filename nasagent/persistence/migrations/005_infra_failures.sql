-- 005: infrastructure failures. A trial that the machines did not run to its end (not scheduled,
-- preempted, evicted, node lost, image not pullable, API errors, quota refusals, a worker killed
-- by a signal or the host's OOM killer, an agent that stopped while it was in flight) is no
-- result of its architecture: the agent never rewards it, puts the trial back in its queue and
-- records the failure here, so that `nasagent status` and the report can count and list them
-- apart from the architectures that failed to learn (trials.status = 'failed').
-- Written by the agent only (trial pods have no grant on it, 003_trial_role.sql).

CREATE TABLE infra_failures (
    id             bigserial PRIMARY KEY,
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    trial_id       bigint REFERENCES trials (id) ON DELETE CASCADE,
    fault          text NOT NULL,
    reason         text NOT NULL,
    worker         text,
    info           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX infra_failures_experiment_idx ON infra_failures (experiment_id, id);
