-- 008: what a deployment budget needs per trial (--max-params, --max-macs, --max-latency-ms,
-- --objective mnas; nasagent.core.limits, nasagent.core.objective).
--
-- `macs`: multiply-accumulates of one image's forward pass (nasagent.core.cost; `params`, 001, holds
-- the parameters). `latency_ms`: batch-1 inference latency on the trial's device, the median of
-- timed runs after a warm-up (nasagent.training.latency), NULL when not measured (a failed
-- training). `reward`: what the strategy was given, the experiment's objective (accuracy, or
-- MnasNet's accuracy x (metric / target)^w, penalised past --max-latency-ms); `accuracy` stays the
-- validation accuracy. NULL in rows written before this migration: readers take the accuracy then,
-- which was the reward.
--
-- Only the agent writes these columns, in the transaction that records the outcome (as it writes
-- `params`). A trial pod (role nasagent_trial, 003) reports them the way it reports its result
-- today, inside trial_results.outcome (fields `macs` and `latency_ms` of the outcome JSON), so it
-- needs no new privilege; its table-level SELECT on trials covers the new columns, and so does the
-- dashboard's (006).
ALTER TABLE trials
    ADD COLUMN macs bigint,
    ADD COLUMN latency_ms double precision,
    ADD COLUMN reward double precision;

-- The leaderboard ranks by the reward (the objective), page by page, as 006 indexes the accuracy.
CREATE INDEX trials_experiment_reward_idx ON trials (experiment_id, reward);
