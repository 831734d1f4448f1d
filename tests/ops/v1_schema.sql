-- The v1 REST service's schema (FastAPI + asyncpg), as issue 9 describes it: timestamps
-- without time zone, meaning UTC; Discord ids; dependencies as an array of task ids.
CREATE TABLE projects (
    id serial PRIMARY KEY,
    name varchar(255) NOT NULL UNIQUE,
    discord_channel_id varchar(50),
    description text,
    status varchar(20) NOT NULL DEFAULT 'active'
        CHECK (status IN ('active', 'paused', 'completed', 'cancelled')),
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at timestamp
);

CREATE TABLE tasks (
    id serial PRIMARY KEY,
    project_id integer NOT NULL REFERENCES projects (id),
    title varchar(500) NOT NULL,
    description text,
    task_type varchar(50) NOT NULL DEFAULT 'general',
    status varchar(50) NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'assigned', 'running', 'reviewing', 'completed', 'failed', 'cancelled', 'rejected')),
    priority integer NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),
    assignee_agent varchar(100),
    reviewer_id varchar(100),
    reviewer_mention varchar(100),
    acceptance_criteria text,
    parent_task_id integer REFERENCES tasks (id),
    dependencies integer[] DEFAULT '{}',
    task_tags text[] DEFAULT '{}',
    estimated_hours double precision,
    timeout_minutes integer,
    retry_count integer NOT NULL DEFAULT 0,
    max_retries integer NOT NULL DEFAULT 3,
    result jsonb,
    feedback text,
    created_by varchar(100),
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    assigned_at timestamp,
    started_at timestamp,
    updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    completed_at timestamp,
    due_at timestamp,
    deleted_at timestamp
);
CREATE INDEX idx_tasks_status ON tasks (status);
CREATE INDEX idx_tasks_project ON tasks (project_id);
CREATE INDEX idx_tasks_assignee ON tasks (assignee_agent);

CREATE TABLE task_logs (
    id serial PRIMARY KEY,
    task_id integer NOT NULL REFERENCES tasks (id),
    action varchar(50) NOT NULL,
    old_status varchar(50),
    new_status varchar(50),
    actor varchar(100),
    message text,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
CREATE INDEX idx_task_logs_task ON task_logs (task_id);

CREATE TABLE agents (
    id serial PRIMARY KEY,
    name varchar(100) NOT NULL UNIQUE,
    discord_user_id varchar(100),
    role varchar(50),
    status varchar(20) NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'offline', 'busy')),
    capabilities jsonb,
    skills text[] DEFAULT '{}',
    total_tasks integer NOT NULL DEFAULT 0,
    completed_tasks integer NOT NULL DEFAULT 0,
    failed_tasks integer NOT NULL DEFAULT 0,
    success_rate double precision NOT NULL DEFAULT 0,
    current_task_id integer,
    last_heartbeat timestamp,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    updated_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'),
    deleted_at timestamp
);

CREATE TABLE agent_channels (
    id serial PRIMARY KEY,
    agent_name varchar(100) NOT NULL,
    channel_id varchar(50) NOT NULL,
    last_seen timestamp,
    UNIQUE (agent_name, channel_id)
);

CREATE TABLE task_type_defaults (
    task_type varchar(50) PRIMARY KEY,
    timeout_minutes integer,
    max_retries integer,
    priority integer,
    updated_at timestamp DEFAULT (now() AT TIME ZONE 'UTC')
);

CREATE TABLE idempotency_keys (
    key varchar(255) PRIMARY KEY,
    response jsonb,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'UTC')
);
