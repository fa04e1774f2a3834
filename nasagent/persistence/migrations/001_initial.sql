-- 001: the whole schema of an experiment. Every table hangs off experiments and is
-- deleted with it. Applied once, inside the migration transaction, by nasagent.store.postgres.

CREATE TABLE experiments (
    id          serial PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    config      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per architecture ever trained (or being trained) in an experiment.
-- UNIQUE (experiment_id, digest) is the replay dictionary: an architecture is trained
-- at most once per experiment, even with several agents or workers racing.
CREATE TABLE trials (
    id             bigserial PRIMARY KEY,
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    arch           text NOT NULL,
    digest         text NOT NULL,
    status         text NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    accuracy       double precision,
    epsilon        double precision,
    params         bigint,
    worker         text,
    failure        text,
    attempts       integer NOT NULL DEFAULT 1,
    info           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    train_seconds  double precision,
    UNIQUE (experiment_id, digest)
);

CREATE INDEX trials_experiment_status_idx ON trials (experiment_id, status);

-- Every sample the agent was rewarded for, in order (id), including replay-dictionary
-- hits, which point at the trial that was trained the first time.
CREATE TABLE replay_memory (
    id             bigserial PRIMARY KEY,
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    trial_id       bigint REFERENCES trials (id) ON DELETE SET NULL,
    arch           text NOT NULL,
    reward         double precision NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX replay_memory_experiment_idx ON replay_memory (experiment_id, id);

CREATE TABLE q_values (
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    state          text NOT NULL,
    action         text NOT NULL,
    value          double precision NOT NULL,
    PRIMARY KEY (experiment_id, state, action)
);

-- The search strategy's own resumable state (epsilon schedule position, RNG state, ...).
CREATE TABLE agent_state (
    experiment_id  integer PRIMARY KEY REFERENCES experiments (id) ON DELETE CASCADE,
    strategy       text NOT NULL,
    state          jsonb NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
