"""A realistic v1 database: every task status, dependencies (one dangling, one on itself),
logs, soft-deleted rows, an assignee missing from the agents table, Discord ids, gaps in
the ids left by rows v1 deleted, and sequences past the last row."""

from __future__ import annotations

from pathlib import Path

import asyncpg

SCHEMA = (Path(__file__).parent / "v1_schema.sql").read_text()
LONG_NAME = "Quarterly " + "q" * 140  # 150 characters: v1 allowed 255, the new service 100
# Work in progress started minutes before the upgrade (a year-old RUNNING task would time out).
MINUTES_AGO = "((now() AT TIME ZONE 'UTC') - interval '{} minutes')"

_DATA = """
INSERT INTO projects (id, name, discord_channel_id, description, status, created_at, updated_at, deleted_at) VALUES
 (1, 'Launch campaign', '1123581321', 'Spring launch', 'active', '2025-03-01 09:00', '2025-03-02 09:00', NULL),
 (2, 'Old newsletter', '2233445566', NULL, 'completed', '2025-01-05 08:00', '2025-02-01 08:00', NULL),
 (3, 'Paused research', NULL, 'On hold', 'paused', '2025-02-10 12:00', '2025-02-11 12:00', NULL),
 (5, 'Cancelled video', '998877', NULL, 'cancelled', '2025-02-12 12:00', '2025-02-13 12:00', '2025-02-14 12:00'),
 (6, '@LONG_NAME', NULL, NULL, 'active', '2025-02-15 12:00', '2025-02-15 12:00', NULL);
SELECT setval('projects_id_seq', 7);

INSERT INTO agents (id, name, discord_user_id, role, status, capabilities, skills, total_tasks, completed_tasks,
                    failed_tasks, success_rate, current_task_id, last_heartbeat, created_at, updated_at, deleted_at)
VALUES
 (1, 'writer', '555000111', 'copywriter', 'busy', '{"model": "claude", "languages": ["en", "fr"]}',
  '{copywrite,seo}', 10, 7, 2, 0.78, 4, '2025-03-03 10:00', '2025-01-01 00:00', '2025-03-03 10:00', NULL),
 (2, 'editor', '555000222', 'reviewer', 'online', NULL, '{review}', 4, 4, 0, 1.0, NULL, '2025-03-03 10:01',
  '2025-01-01 00:00', '2025-03-03 10:01', NULL),
 (3, 'designer', NULL, NULL, 'offline', NULL, '{design,NULL,""}', 2, 1, 1, 0.5, 3, '2025-03-02 18:00',
  '2025-01-02 00:00', '2025-03-02 18:00', NULL),
 (5, 'retired', NULL, 'old bot', 'offline', NULL, '{}', 0, 0, 0, 0, NULL, NULL, '2024-12-01 00:00',
  '2025-01-01 00:00', '2025-01-01 00:00');
SELECT setval('agents_id_seq', 5);

INSERT INTO tasks (id, project_id, title, description, task_type, status, priority, assignee_agent, reviewer_id,
                   reviewer_mention, acceptance_criteria, parent_task_id, dependencies, task_tags, estimated_hours,
                   timeout_minutes, retry_count, max_retries, result, feedback, created_by, created_at, assigned_at,
                   started_at, updated_at, completed_at, due_at, deleted_at) VALUES
 (1, 1, 'Research the audience', 'Who buys', 'research', 'pending', 8, NULL, NULL, NULL, NULL, NULL, '{}',
  '{launch,research}', 2.5, 120, 0, 3, NULL, NULL, 'alice', '2025-03-01 10:00', NULL, NULL, '2025-03-01 10:00',
  NULL, '2025-03-10 17:00', NULL),
 (2, 1, 'Write the brief', NULL, 'copywrite', 'completed', 5, 'writer', 'editor', '<@555000222>', 'Clear',
  NULL, '{}', '{launch}', NULL, 60, 0, 3, '{"words": 420}', 'Clear and short', 'alice', '2025-03-01 10:05',
  '2025-03-01 11:00', '2025-03-01 11:05', '2025-03-01 15:00', '2025-03-01 15:00', NULL, NULL),
 (3, 1, 'Design the visuals', NULL, 'design', 'running', 5, 'designer', NULL, NULL, NULL, NULL, '{2}', '{}',
  NULL, 180, 1, 3, NULL, NULL, 'alice', '2025-03-01 10:10', @10_MINUTES_AGO, @5_MINUTES_AGO,
  @5_MINUTES_AGO, NULL, NULL, NULL),
 (4, 1, 'Social posts', NULL, 'copywrite', 'assigned', 4, 'writer', NULL, NULL, NULL, NULL, '{1,999}',
  '{social}', NULL, NULL, 0, 3, NULL, NULL, 'alice', '2025-03-01 10:15', '2025-03-03 09:00', NULL,
  '2025-03-03 09:00', NULL, NULL, NULL),
 (5, 1, 'Blog post', NULL, 'copywrite', 'reviewing', 6, 'writer', 'editor', '<@555000222>', NULL, NULL, '{2}',
  '{}', NULL, NULL, 0, 2, '{"url": "https://example.invalid/draft"}', NULL, 'alice', '2025-03-01 10:20',
  '2025-03-02 10:00', '2025-03-02 10:05', '2025-03-02 16:00', NULL, NULL, NULL),
 (6, 1, 'Video cut', NULL, 'video', 'failed', 5, 'ghost', NULL, NULL, NULL, NULL, '{}', '{}', NULL, 240, 3, 3,
  NULL, NULL, 'bob', '2025-03-01 10:25', '2025-03-02 08:00', '2025-03-02 08:10', '2025-03-02 20:00', NULL, NULL,
  NULL),
 (7, 1, 'Podcast', NULL, 'research', 'cancelled', 3, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, NULL, 0, 3,
  NULL, NULL, 'bob', '2025-03-01 10:30', NULL, NULL, '2025-03-01 12:00', NULL, NULL, NULL),
 (8, 1, 'Landing page copy', NULL, 'copywrite', 'rejected', 7, 'writer', 'editor', NULL, NULL, NULL, '{}', '{}',
  NULL, NULL, 0, 3, '{"words": 900}', 'Too long', 'alice', '2025-03-01 10:35', '2025-03-01 12:00',
  '2025-03-01 12:05', '2025-03-01 14:00', NULL, NULL, NULL),
 (9, 1, 'Press release', NULL, 'copywrite', 'rejected', 5, 'writer', 'editor', NULL, NULL, NULL, '{}', '{}',
  NULL, NULL, 3, 3, NULL, 'Still wrong', 'alice', '2025-03-01 10:40', '2025-03-02 12:00', '2025-03-02 12:05',
  '2025-03-02 14:00', NULL, NULL, NULL),
 (10, 1, 'Obsolete task', NULL, 'research', 'pending', 5, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, NULL,
  0, 3, NULL, NULL, 'alice', '2025-03-01 10:45', NULL, NULL, '2025-03-01 10:46', NULL, NULL, '2025-03-01 10:46'),
 (11, 1, 'Publish everything', NULL, 'publish', 'pending', 9, NULL, NULL, NULL, NULL, 2, '{3,4,5}', '{launch}',
  NULL, NULL, 0, 2, NULL, NULL, 'alice', '2025-03-01 10:50', NULL, NULL, '2025-03-01 10:50', NULL,
  '2025-03-20 12:00', NULL),
 (12, 3, 'Loop on itself', NULL, 'analysis', 'pending', 5, NULL, NULL, NULL, NULL, NULL, '{12}', '{}', NULL,
  NULL, 0, 3, NULL, NULL, NULL, '2025-02-10 12:30', NULL, NULL, '2025-02-10 12:30', NULL, NULL, NULL),
 (14, 5, 'Storyboard', NULL, 'video', 'pending', 5, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, NULL, 0, 3,
  NULL, NULL, NULL, '2025-02-12 12:30', NULL, NULL, '2025-02-12 12:30', NULL, NULL, NULL),
 (15, 1, 'Reviewed on Discord', NULL, 'review', 'pending', 5, NULL, 'discord:8888', '<@8888>', NULL, NULL, '{}',
  '{}', NULL, NULL, 1, 3, NULL, NULL, NULL, '2025-03-01 10:55', NULL, NULL, '2025-03-01 10:55', NULL, NULL, NULL),
 (16, 1, 'Orphaned run', NULL, 'testing', 'running', 5, NULL, NULL, NULL, NULL, NULL, '{}', '{}', NULL, NULL, 0,
  3, NULL, NULL, NULL, '2025-03-01 11:00', '2025-03-02 11:00', '2025-03-02 11:05', '2025-03-02 11:05', NULL, NULL,
  NULL);
SELECT setval('tasks_id_seq', 20);

INSERT INTO task_logs (id, task_id, action, old_status, new_status, actor, message, created_at) VALUES
 (1, 2, 'created', NULL, 'pending', 'alice', NULL, '2025-03-01 10:05'),
 (2, 2, 'assigned', 'pending', 'assigned', 'writer', NULL, '2025-03-01 11:00'),
 (3, 2, 'started', 'assigned', 'running', 'writer', NULL, '2025-03-01 11:05'),
 (4, 2, 'submitted', 'running', 'reviewing', 'writer', 'Draft ready', '2025-03-01 14:00'),
 (5, 2, 'approved', 'reviewing', 'completed', 'editor', 'Clear and short', '2025-03-01 15:00'),
 (7, 8, 'rejected', 'reviewing', 'rejected', 'editor', 'Too long', '2025-03-01 14:00'),
 (8, 6, 'failed', 'running', 'failed', 'ghost', 'Encoder crashed', '2025-03-02 20:00'),
 (9, 4, 'status_change', 'pending', 'assigned', 'writer', NULL, '2025-03-03 09:00'),
 (10, 1, 'comment', NULL, NULL, 'alice', 'Focus on developers', '2025-03-01 10:02');
SELECT setval('task_logs_id_seq', 12);

INSERT INTO agent_channels (agent_name, channel_id, last_seen) VALUES
 ('writer', '1123581321', '2025-03-03 10:00'), ('editor', '1123581321', '2025-03-03 10:01');

INSERT INTO task_type_defaults (task_type, timeout_minutes, max_retries, priority) VALUES
 ('research', 200, 2, 6), ('custom', 15, 0, 9);

INSERT INTO idempotency_keys (key, response) VALUES ('create-launch', '{"id": 1}');
"""
DATA = (
    _DATA.replace("@LONG_NAME", LONG_NAME)
    .replace("@10_MINUTES_AGO", MINUTES_AGO.format(10))
    .replace("@5_MINUTES_AGO", MINUTES_AGO.format(5))
)

# What the conversion reports about this data (besides its summary and closing lines).
FINDINGS = [
    "project 6: name cut to 100 characters (the full name stays in v1_projects)",
    "created agent 'ghost': an assignee missing from v1's agents",
    "task 16 was RUNNING without an assignee: back to PENDING",
    "task 8 was rejected: now PENDING (attempt 1 of 4)",
    "task 9 was rejected: now FAILED (attempt 4 of 4)",
    "skipped the dependency of task 4 on task 999, which no longer exists",
    "skipped the dependency of task 12 on itself",
]


async def build_v1_database(dsn: str) -> None:
    """Create the v1 schema and rows in the (empty) database at the libpq `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(SCHEMA)
        await conn.execute(DATA)
    finally:
        await conn.close()
