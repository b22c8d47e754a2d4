-- The platform's state, as the examples and tests use it: tasks (task
-- state), environments (resource state), deployments and audit_log
-- (operational history).
CREATE TABLE IF NOT EXISTS tasks (
    id          bigint PRIMARY KEY,
    status      text NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
    progress    float8 NOT NULL DEFAULT 0,
    payload     jsonb NOT NULL DEFAULT '{}',
    tags        text[] NOT NULL DEFAULT '{}',
    owner_id    uuid,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS environments (
    id          int PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    status      text NOT NULL CHECK (status IN ('provisioning', 'active', 'released')),
    allocated_to bigint REFERENCES tasks (id) ON DELETE SET NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS deployments (
    id          bigserial PRIMARY KEY,
    environment_id int NOT NULL REFERENCES environments (id),
    version     text NOT NULL,
    status      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE IF NOT EXISTS audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    action      text NOT NULL,
    detail      jsonb
);
