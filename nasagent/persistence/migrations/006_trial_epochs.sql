-- 006: per-epoch metrics of every trial, written as it trains (the dashboard's learning curves;
-- `status --json` and `top --json` show them for finished trials), and the dashboard's read-only role.
--
-- One row per epoch trained by one run of a trial: the worker that trains it (a local worker process
-- or a trial pod, the same code: nasagent.execution.epochs.EpochRecorder) inserts each row right
-- after the epoch. `attempt` is the trial's `trials.attempts` when the run started (the agent bumps
-- it whenever it trains the trial again); `run` is the launcher's attempt within it (a retried trial
-- pod, NASAGENT_ATTEMPT; 1 for local workers). Readers show the latest (attempt, run) of a trial.
-- `epoch` counts every epoch the run trained, 1-based, the trainer's restarts included (`restarts`
-- says how many re-initialisations came before it). `val_accuracy` is NULL for an epoch whose loss
-- diverged (never evaluated), `train_loss` NULL when it was not finite. `seconds`: that epoch's time.
CREATE TABLE trial_epochs (
    experiment_id  integer NOT NULL REFERENCES experiments (id) ON DELETE CASCADE,
    trial_id       bigint NOT NULL REFERENCES trials (id) ON DELETE CASCADE,
    attempt        integer NOT NULL,
    run            integer NOT NULL DEFAULT 1,
    epoch          integer NOT NULL CHECK (epoch >= 1),
    train_loss     double precision,
    val_accuracy   double precision,
    lr             double precision,
    restarts       integer NOT NULL DEFAULT 0,
    seconds        double precision,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- No serial id: a trial pod's role may then insert rows with INSERT alone (no sequence to use).
    PRIMARY KEY (trial_id, attempt, run, epoch)
);

-- The dashboard polls "anything new in this experiment?" (row count and latest row) and reads the
-- curves of its running trials.
CREATE INDEX trial_epochs_experiment_idx ON trial_epochs (experiment_id, created_at);

-- The dashboard sorts the leaderboard by each of these columns, page by page, over thousands of trials.
CREATE INDEX trials_experiment_accuracy_idx ON trials (experiment_id, accuracy);
CREATE INDEX trials_experiment_finished_idx ON trials (experiment_id, finished_at);

-- Trial pods (role nasagent_trial, 003_trial_role.sql) insert their epochs and nothing else: no
-- SELECT, UPDATE or DELETE. The dashboard's role, nasagent_dashboard, reads everything and writes
-- nothing; tables later migrations create are readable by it too (default privileges). Both roles
-- are created here without LOGIN where the owner may create roles; the cluster's PostgreSQL gives
-- them LOGIN and a password (docs/cluster.md, "The dashboard"). Idempotent, like 003.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_trial') THEN
        GRANT INSERT ON trial_epochs TO nasagent_trial;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_dashboard') THEN
        IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            RAISE NOTICE 'role nasagent_dashboard does not exist and % may not create it', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE nasagent_dashboard NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- roles belong to the server: the migration of another database created it meanwhile
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO nasagent_dashboard', current_schema());
    EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO nasagent_dashboard', current_schema());
    EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO nasagent_dashboard',
                   current_schema());
END
$$;
