"""The GraphQL documents the SDK sends, one per operation, sharing a few fragments.

Only names from the public contract (shared/contract.graphql) appear here, so any server
that honours the contract serves this client.
"""

from __future__ import annotations

TASK = """
fragment TaskFields on Task {
  id title description taskType status priority tags requiredSkills
  project { id } assignee { name } reviewer acceptanceCriteria requiresReview parent { id }
  dependencies { id } blockedBy { id } ready attempt maxAttempts progress progressMessage
  result summary feedback lastError estimatedHours timeoutMinutes createdBy
  createdAt updatedAt availableAt assignedAt startedAt submittedAt completedAt dueAt leaseExpiresAt
}
"""

AGENT = """
fragment AgentFields on Agent {
  id name role skills capabilities status maxConcurrentTasks lastHeartbeatAt registeredAt
  currentTasks { id }
  stats { totalTasks completedTasks failedTasks successRate }
}
"""

PROGRESS = "progress { total pending assigned running reviewing completed failed cancelled percentComplete }"

PROJECT = f"""
fragment ProjectFields on Project {{
  id name description status createdAt updatedAt {PROGRESS}
}}
"""

EVENT = """
fragment EventFields on TaskEvent {
  id taskId projectId type fromStatus toStatus actor message data createdAt
}
"""

# Mutations changing a task: (field, declared arguments, passed arguments).
_TASK_MUTATIONS = {
    "claimTask": (
        "$id: ID!, $agent: String, $idempotencyKey: String",
        "id: $id, agent: $agent, idempotencyKey: $idempotencyKey",
    ),
    "claimNextTask": (
        "$agent: String, $projectId: ID, $tags: [String!]",
        "agent: $agent, projectId: $projectId, tags: $tags",
    ),
    "startTask": (
        "$id: ID!, $agent: String, $attempt: Int, $idempotencyKey: String",
        "id: $id, agent: $agent, attempt: $attempt, idempotencyKey: $idempotencyKey",
    ),
    "reportProgress": (
        "$id: ID!, $agent: String, $progress: Int!, $message: String, $attempt: Int",
        "id: $id, agent: $agent, progress: $progress, message: $message, attempt: $attempt",
    ),
    "submitTask": (
        "$id: ID!, $agent: String, $result: JSON, $summary: String, $attempt: Int, $idempotencyKey: String",
        "id: $id, agent: $agent, result: $result, summary: $summary, attempt: $attempt,"
        " idempotencyKey: $idempotencyKey",
    ),
    "releaseTask": (
        "$id: ID!, $agent: String, $reason: String, $attempt: Int, $idempotencyKey: String",
        "id: $id, agent: $agent, reason: $reason, attempt: $attempt, idempotencyKey: $idempotencyKey",
    ),
    "failTask": (
        "$id: ID!, $agent: String, $error: String!, $retryable: Boolean, $attempt: Int, $idempotencyKey: String",
        "id: $id, agent: $agent, error: $error, retryable: $retryable, attempt: $attempt,"
        " idempotencyKey: $idempotencyKey",
    ),
    "reviewTask": (
        "$id: ID!, $reviewer: String!, $approved: Boolean!, $feedback: String, $idempotencyKey: String",
        "id: $id, reviewer: $reviewer, approved: $approved, feedback: $feedback, idempotencyKey: $idempotencyKey",
    ),
    "retryTask": ("$id: ID!, $idempotencyKey: String", "id: $id, idempotencyKey: $idempotencyKey"),
    "cancelTask": (
        "$id: ID!, $reason: String, $idempotencyKey: String",
        "id: $id, reason: $reason, idempotencyKey: $idempotencyKey",
    ),
    "createTask": ("$input: CreateTaskInput!", "input: $input"),
    "updateTask": ("$id: ID!, $input: UpdateTaskInput!", "id: $id, input: $input"),
    "addDependency": ("$taskId: ID!, $dependsOn: ID!", "taskId: $taskId, dependsOn: $dependsOn"),
    "removeDependency": ("$taskId: ID!, $dependsOn: ID!", "taskId: $taskId, dependsOn: $dependsOn"),
    "restoreTask": ("$id: ID!", "id: $id"),
}

TASK_MUTATION = {
    name: f"mutation {name[0].upper()}{name[1:]}({params}) {{ {name}({args}) {{ ...TaskFields }} }}" + TASK
    for name, (params, args) in _TASK_MUTATIONS.items()
}

CREATE_TASKS = (
    "mutation CreateTasks($projectId: ID!, $tasks: [CreateTaskInput!]!) {"
    " createTasks(projectId: $projectId, tasks: $tasks) { ...TaskFields } }" + TASK
)
DELETE_TASK = "mutation DeleteTask($id: ID!, $hard: Boolean) { deleteTask(id: $id, hard: $hard) }"

REGISTER_AGENT = (
    "mutation RegisterAgent($input: RegisterAgentInput!) {"
    " registerAgent(input: $input) { token agent { ...AgentFields } } }" + AGENT
)
HEARTBEAT = "mutation Heartbeat($agent: String) { heartbeat(agent: $agent) { ...AgentFields } }" + AGENT
UNREGISTER_AGENT = (
    "mutation UnregisterAgent($name: String!, $hard: Boolean) { unregisterAgent(name: $name, hard: $hard) }"
)

CREATE_PROJECT = (
    "mutation CreateProject($input: CreateProjectInput!) { createProject(input: $input) { ...ProjectFields } }"
    + PROJECT
)
UPDATE_PROJECT = (
    "mutation UpdateProject($id: ID!, $input: UpdateProjectInput!) {"
    " updateProject(id: $id, input: $input) { ...ProjectFields } }" + PROJECT
)

TASK_QUERY = "query Task($id: ID!) { task(id: $id) { ...TaskFields } }" + TASK
TASKS_QUERY = (
    "query Tasks($filter: TaskFilter, $first: Int, $after: String) {"
    " tasks(filter: $filter, first: $first, after: $after) {"
    " nodes { ...TaskFields } pageInfo { hasNextPage endCursor } totalCount } }" + TASK
)
AVAILABLE_TASKS = (
    "query AvailableTasks($agent: String, $projectId: ID, $first: Int) {"
    " availableTasks(agent: $agent, projectId: $projectId, first: $first) { ...TaskFields } }" + TASK
)
PROJECT_QUERY = "query Project($id: ID!) { project(id: $id) { ...ProjectFields } }" + PROJECT
PROJECTS_QUERY = "query Projects($status: ProjectStatus) { projects(status: $status) { ...ProjectFields } }" + PROJECT
AGENT_QUERY = "query Agent($name: String!) { agent(name: $name) { ...AgentFields } }" + AGENT
AGENTS_QUERY = (
    "query Agents($status: AgentStatus, $skill: String) { agents(status: $status, skill: $skill) { ...AgentFields } }"
    + AGENT
)
AGENT_TASKS = "query AgentTasks($name: String!) { agent(name: $name) { currentTasks { ...TaskFields } } }" + TASK
EVENTS_QUERY = (
    "query Events($after: ID, $projectId: ID, $taskId: ID, $first: Int) {"
    " events(after: $after, projectId: $projectId, taskId: $taskId, first: $first) { ...EventFields } }" + EVENT
)
DASHBOARD_STATS = (
    "query DashboardStats($projectId: ID, $recent: Int) { dashboardStats(projectId: $projectId) {"
    " projects { total active } tasks { total pending ready assigned running reviewing completed failed cancelled }"
    " agents { total online busy offline } deleted { projects tasks agents }"
    " recentEvents(first: $recent) { ...EventFields } generatedAt } }" + EVENT
)
LATEST_EVENT = "query LatestEvent { dashboardStats { recentEvents(first: 1) { id } } }"

TASK_EVENTS = (
    "subscription TaskEvents($after: ID, $projectId: ID, $taskId: ID, $agent: String) {"
    " taskEvents(after: $after, projectId: $projectId, taskId: $taskId, agent: $agent) { ...EventFields } }" + EVENT
)
