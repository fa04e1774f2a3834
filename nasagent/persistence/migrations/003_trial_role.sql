-- 003: the database role of trial pods. A trial (`nasagent trial --experiment NAME --trial-id ID`,
-- nasagent.execution.worker.record_trial) reads its experiment and its trial row and reports its
-- outcome into trial_results; the agent, connected as the owner, does everything else. Trial pods
-- connect as nasagent_trial (Secret nasagent-trial-db), which may do exactly what a trial does:
--   * read schema_migrations.version (Store.connect checks that the schema is current),
--   * read experiments and trials,
--   * insert its row into trial_results, and overwrite it on a later attempt (INSERT ... ON
--     CONFLICT DO UPDATE needs SELECT and UPDATE on the columns it touches),
-- and nothing else: no UPDATE of trials or q_values, no DELETE, no DDL (PostgreSQL 15+ no longer
-- lets every role create tables in the public schema). tests/test_db_roles.py proves both sides
-- against a real PostgreSQL.
--
-- The role is created here, without LOGIN, if it does not exist yet and the owner may create roles;
-- the PostgreSQL of manifests/ creates it with LOGIN and its password when it initialises its volume
-- (manifests/base/postgres-init.sql). Elsewhere give it a password yourself:
--   ALTER ROLE nasagent_trial LOGIN PASSWORD '...';
-- If the owner may not create roles, nothing is granted here: create the role, then run this file
-- again as the owner (psql -v ON_ERROR_STOP=1 -f 003_trial_role.sql); it is idempotent.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_trial') THEN
        IF NOT (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            RAISE NOTICE 'role nasagent_trial does not exist and % may not create it: trial pods keep no role of their own', current_user;
            RETURN;
        END IF;
        BEGIN
            CREATE ROLE nasagent_trial NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;  -- roles belong to the server: the migration of another database created it meanwhile
        END;
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA %I TO nasagent_trial', current_schema());
    GRANT SELECT (version) ON schema_migrations TO nasagent_trial;
    GRANT SELECT ON experiments, trials TO nasagent_trial;
    GRANT SELECT (trial_id, attempt, outcome), INSERT (trial_id, attempt, outcome),
        UPDATE (attempt, outcome, created_at) ON trial_results TO nasagent_trial;
END
$$;
