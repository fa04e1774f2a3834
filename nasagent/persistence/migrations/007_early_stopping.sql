-- 007: early stopping (--early-stop median|predict): the agent's stop decisions, its predictor's
-- state, and the trial status 'stopped'.
--
-- The decision protocol, the same for local workers and trial pods (nasagent.execution.epochs and
-- nasagent.search.judge): after each epoch a trial writes its row to trial_epochs (006) and waits a
-- few seconds for the row of that epoch here; the agent's judge reads the epochs of running trials
-- that have no decision yet, applies the experiment's rule, and writes one decision per epoch:
-- `stop` or go on, the rule, why (`reason`), and for predict the predicted final accuracy (the
-- stopped network's reward). A trial that is told to stop ends with status 'stopped'; one that
-- hears nothing in time trains on. The key is trial_epochs' own: (trial, attempt, run, epoch).
CREATE TABLE trial_decisions (
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    trial_id       bigint NOT NULL REFERENCES trials (id) ON DELETE CASCADE,
    attempt        integer NOT NULL,
    run            integer NOT NULL DEFAULT 1,
    epoch          integer NOT NULL CHECK (epoch >= 1),
    stop           boolean NOT NULL,
    rule           text NOT NULL,
    predicted      double precision,
    reason         text NOT NULL DEFAULT '',
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (trial_id, attempt, run, epoch)
);

CREATE INDEX trial_decisions_experiment_idx ON trial_decisions (experiment_id, created_at);

-- The judge's resumable state (for predict: the ν-SVR settings and the trials the predictor was last
-- fitted on), written in the transaction of the decisions that followed a refit, so that an agent
-- killed at any moment resumes with the very predictor its decisions came from.
CREATE TABLE stopping_state (
    experiment_id  integer PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
    rule           text NOT NULL,
    state          jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- A stopped trial is finished: it counts towards the budget and is rewarded (trials.accuracy holds
-- its reward: the predicted final accuracy for predict, the best accuracy it reached for median).
ALTER TABLE trials DROP CONSTRAINT IF EXISTS trials_status_check;
ALTER TABLE trials ADD CONSTRAINT trials_status_check CHECK (status IN ('running', 'done', 'failed', 'stopped'));

-- Trial pods (role nasagent_trial, 003) read the decisions of their own epochs and write none; the
-- dashboard's role reads these tables through 006's default privileges. Idempotent, like 003.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_trial') THEN
        GRANT SELECT ON trial_decisions TO nasagent_trial;
    END IF;
END
$$;
