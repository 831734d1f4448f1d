// Every GraphQL document the dashboard sends (names from ../shared/contract.graphql).

// What a card shows. The live feed asks for no more than this (the event carries the
// project id): every nested object here costs the server a load per event.
const LIVE_CARD_FIELDS = `
  id title status priority tags taskType attempt maxAttempts progress ready
  requiresReview reviewer createdAt updatedAt availableAt
  assignee { name }
`;

export const CARD_FIELDS = `${LIVE_CARD_FIELDS} project { id }`;

export const AGENT_FIELDS = `
  id name role skills status maxConcurrentTasks lastHeartbeatAt
  stats { totalTasks completedTasks failedTasks successRate }
`;

export const PROJECT_FIELDS = `
  id name description status
  progress { total pending assigned running reviewing completed failed cancelled percentComplete }
`;

const EVENT_FIELDS = "id taskId projectId type fromStatus toStatus actor message createdAt";

export const STATS_FIELDS = `
  projects { total active }
  tasks { total pending ready assigned running reviewing completed failed cancelled }
  agents { total online busy offline }
`;

// The newest events: where the live feed resumes, and the feed's first lines.
export const HEAD = `query Head($first: Int!) {
  dashboardStats { ${STATS_FIELDS} recentEvents(first: $first) { ${EVENT_FIELDS} } }
}`;

export const PROJECTS = `query Projects { projects { ${PROJECT_FIELDS} } }`;

export const AGENTS = `query Agents { agents { ${AGENT_FIELDS} } }`;

export const AGENT = `query Agent($name: String!) { agent(name: $name) { ${AGENT_FIELDS} } }`;

export const TASKS_PAGE = `query Tasks($filter: TaskFilter, $first: Int!, $after: String) {
  tasks(filter: $filter, first: $first, after: $after) {
    totalCount
    pageInfo { hasNextPage endCursor }
    nodes { ${CARD_FIELDS} }
  }
}`;

export const TASK_DETAIL = `query Task($id: ID!) {
  task(id: $id) {
    ${CARD_FIELDS}
    description acceptanceCriteria progressMessage result summary feedback lastError
    estimatedHours timeoutMinutes createdBy assignedAt startedAt submittedAt completedAt dueAt
    leaseExpiresAt
    assignee { name status }
    project { id name }
    requiredSkills
    parent { id title status }
    subtasks { id title status }
    dependencies { id title status }
    dependents { id title status }
  }
  events(taskId: $id, first: 500) { ${EVENT_FIELDS} data }
}`;

export const PROJECT_GRAPH = `query ProjectGraph($id: ID!, $first: Int!, $after: String) {
  project(id: $id) {
    id name
    tasks(first: $first, after: $after) {
      pageInfo { hasNextPage endCursor }
      nodes { id title status dependencies { id } }
    }
  }
}`;

// Live: the feed with the changed task (null once deleted), presence, headline counts.
export const TASK_EVENTS = `subscription Feed($after: ID) {
  taskEvents(after: $after) { ${EVENT_FIELDS} task { ${LIVE_CARD_FIELDS} } }
}`;

export const AGENT_PRESENCE = `subscription Presence {
  agentPresence { previousStatus status at agent { ${AGENT_FIELDS} } }
}`;

export const STATS = `subscription Stats { dashboardStats { ${STATS_FIELDS} } }`;

export const CREATE_PROJECT = `mutation CreateProject($input: CreateProjectInput!) {
  createProject(input: $input) { ${PROJECT_FIELDS} }
}`;

export const CREATE_TASK = `mutation CreateTask($input: CreateTaskInput!) {
  createTask(input: $input) { ${CARD_FIELDS} }
}`;

export const REVIEW_TASK = `mutation Review($id: ID!, $reviewer: String!, $approved: Boolean!, $feedback: String) {
  reviewTask(id: $id, reviewer: $reviewer, approved: $approved, feedback: $feedback) { ${CARD_FIELDS} }
}`;

export const RETRY_TASK = `mutation Retry($id: ID!) { retryTask(id: $id) { ${CARD_FIELDS} } }`;

export const CANCEL_TASK = `mutation Cancel($id: ID!, $reason: String) {
  cancelTask(id: $id, reason: $reason) { ${CARD_FIELDS} }
}`;

export const RELEASE_TASK = `mutation Release($id: ID!, $agent: String, $reason: String) {
  releaseTask(id: $id, agent: $agent, reason: $reason) { ${CARD_FIELDS} }
}`;
