-- What `walcast setup` does, by hand, for one tenant database. Run as a
-- superuser (or the tables' owner) on the tenant's database; replace the
-- names and the password.
--
-- 1. The server must run with wal_level = logical (needs a restart):
--      ALTER SYSTEM SET wal_level = logical;
--    and have a free replication slot and wal sender (max_replication_slots,
--    max_wal_senders; the defaults of 10 are usually enough).

-- 2. A role for walcast that may replicate and read the streamed tables.
CREATE ROLE walcast WITH LOGIN REPLICATION PASSWORD 'change-me';
GRANT USAGE ON SCHEMA public TO walcast;
GRANT SELECT ON public.tasks, public.environments, public.deployments, public.audit_log TO walcast;

--    For walcast (`walcast setup`, or `walcast run` on first start) to
--    create the publication itself, the role must own the tables and have
--    CREATE on the database (CREATE PUBLICATION needs it; owning the tables
--    does not give it):
--      GRANT CREATE ON DATABASE platform TO walcast;

-- 3. The publication: the tables walcast streams (the tenant's `tables`).
--    Default name: walcast_<tenant id>. publish_via_partition_root makes
--    changes of a partitioned table carry its name rather than the name of
--    the partition holding the row.
CREATE PUBLICATION walcast_acme FOR TABLE public.tasks, public.environments, public.deployments, public.audit_log
    WITH (publish_via_partition_root = true);

-- 4. The replication slot (walcast run also creates it when it is missing).
--    Default name: walcast_<tenant id>. A slot keeps WAL until walcast has
--    read it: drop it when you remove the tenant:
--      SELECT pg_drop_replication_slot('walcast_acme');
SELECT pg_create_logical_replication_slot('walcast_acme', 'pgoutput');

-- 5. pg_hba.conf must let walcast connect to the tenant's database, for
--    example:
--      host  platform  walcast  10.0.0.0/8  scram-sha-256
--    Logical replication sessions match this database line like the regular
--    connection; a `replication` line is for physical replication only.
