-- 002: what a trial run elsewhere (a Kubernetes Job, a KFP run) reports back. The trial writes
-- its outcome here and exits; the agent's launcher reads it when the Job or run succeeded and
-- records it in the trial row in its own transaction, so only the agent ever writes `trials`.
-- One row per trial: a later attempt overwrites an earlier one.

CREATE TABLE trial_results (
    trial_id    bigint PRIMARY KEY REFERENCES trials (id) ON DELETE CASCADE,
    attempt     integer NOT NULL DEFAULT 1,
    outcome     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
