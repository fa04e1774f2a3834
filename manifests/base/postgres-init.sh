#!/bin/sh
# Run once by the PostgreSQL image when it initialises an empty volume (/docker-entrypoint-initdb.d),
# while the server listens on its unix socket only: creates the login role of trial pods,
# nasagent_trial, with the password in $NASAGENT_TRIAL_PASSWORD_FILE (Secret nasagent-postgres, key
# TRIAL_PASSWORD; the same password as in Secret nasagent-trial-db's url). What the role may do is
# granted by nasagent's schema migration 003 (nasagent/persistence/migrations/003_trial_role.sql)
# when the agent first connects: the tables do not exist yet. Running it again changes nothing but
# the password. The password is read by psql itself, so it never appears in a command line.
set -eu

: "${NASAGENT_TRIAL_PASSWORD_FILE:?}" "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
if [ ! -r "$NASAGENT_TRIAL_PASSWORD_FILE" ] || [ "$(wc -c < "$NASAGENT_TRIAL_PASSWORD_FILE")" -lt 8 ]; then
    echo "postgres-init: $NASAGENT_TRIAL_PASSWORD_FILE (Secret nasagent-postgres, key TRIAL_PASSWORD) is missing or shorter than 8 characters" >&2
    exit 1
fi

psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\set trial_password `cat "$NASAGENT_TRIAL_PASSWORD_FILE"`
SELECT 'CREATE ROLE nasagent_trial' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_trial') \gexec
ALTER ROLE nasagent_trial LOGIN PASSWORD :'trial_password';
SQL
echo "postgres-init: role nasagent_trial can log in"
