-- 004: who holds an experiment's search lock, and whether its space ran out.
--
-- The lock itself is a session-level advisory lock keyed by a hash of the experiment's name (it
-- exists before the experiment does, and dies with its holder's connection); this table only
-- says who took it, so that a refused search can name the holder. A row whose backend is gone is
-- stale and simply overwritten by the next holder.
CREATE TABLE experiment_locks (
    name         text PRIMARY KEY,
    purpose      text NOT NULL,
    host         text NOT NULL,
    pid          integer NOT NULL,
    backend_pid  integer NOT NULL,
    since        timestamptz NOT NULL
);

-- Set (to a one-line note) when a search found no untrained architecture left in its space, so
-- that status reports the search as finished and a rerun does not search the space again.
ALTER TABLE experiments ADD COLUMN exhausted text;
