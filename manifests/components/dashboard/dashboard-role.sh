#!/bin/sh
# Run once by the PostgreSQL image when it initialises an empty volume (/docker-entrypoint-initdb.d),
# beside base's trial-role.sh: creates the login role of the dashboard, nasagent_dashboard, with the
# password in $NASAGENT_DASHBOARD_PASSWORD_FILE (this component sets it on PostgreSQL's container:
# /run/secrets/nasagent-postgres/DASHBOARD_PASSWORD, Secret nasagent-postgres, key
# DASHBOARD_PASSWORD; the same password as in Secret nasagent-dashboard-db's url). It may read and
# nothing else: schema migration 006 (nasagent/persistence/migrations/006_trial_epochs.sql) grants
# it SELECT on every table when the agent first connects. On a volume initialised before, run the
# same statements yourself (docs/dashboard.md). The password is read by psql, never on a command line.
set -eu

: "${POSTGRES_USER:?}" "${POSTGRES_DB:?}"
PASSWORD_FILE="${NASAGENT_DASHBOARD_PASSWORD_FILE:-/run/secrets/nasagent-postgres/DASHBOARD_PASSWORD}"
if [ ! -r "$PASSWORD_FILE" ] || [ "$(wc -c < "$PASSWORD_FILE")" -lt 8 ]; then
    echo "dashboard-role: $PASSWORD_FILE (Secret nasagent-postgres, key DASHBOARD_PASSWORD) is missing or shorter than 8 characters" >&2
    exit 1
fi
export PASSWORD_FILE

psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\set dashboard_password `cat "$PASSWORD_FILE"`
SELECT 'CREATE ROLE nasagent_dashboard' WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nasagent_dashboard') \gexec
ALTER ROLE nasagent_dashboard LOGIN PASSWORD :'dashboard_password';
ALTER ROLE nasagent_dashboard SET default_transaction_read_only = on;
SQL
echo "dashboard-role: role nasagent_dashboard can log in (read-only)"
