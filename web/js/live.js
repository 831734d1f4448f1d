// The live connection: taskEvents (resumed from the last event id seen), agentPresence and
// dashboardStats over one graphql-transport-ws WebSocket, reconnected after any loss.
//
// graphql-ws would retry by itself, but it re-sends each subscription with the variables it
// started with, so taskEvents would replay from the first cursor. Here the client never
// retries (retryAttempts: 0): on a loss the whole connection is dropped and rebuilt with
// `after` = the last event id applied, which the server replays from with no gap and no
// repeat. States: "connecting", "catching-up", "live", "reconnecting", "offline".
import { createClient } from "../vendor/graphql-ws-6.4.2/client.js";
import { AuthError } from "./api.js";
import { AGENT_PRESENCE, HEAD, STATS, TASK_EVENTS } from "./queries.js";

const FORBIDDEN = 4403; // graphql-transport-ws: connection_init refused (missing/wrong credential)
const KEEP_ALIVE_MS = 10_000; // our ping; no pong within PONG_TIMEOUT_MS means a dead link
const PONG_TIMEOUT_MS = 5_000;
const OFFLINE_AFTER_MS = 15_000; // "reconnecting" becomes "offline" after this long
const BACKOFF_MS = [250, 500, 1000, 2000, 4000, 5000];

export class Live {
  /**
   * handlers: event(e), presence(p), stats(s), state(name, detail), resync(), authFailure(AuthError)
   */
  constructor(api, handlers) {
    this.api = api;
    this.handlers = handlers;
    this.cursor = 0;
    this.target = 0;
    this.client = null;
    this.generation = 0;
    this.attempt = 0;
    this.lostAt = null;
    this.timer = null;
    this.stopped = true;
    this.state = "connecting";
    window.addEventListener("offline", () => this.stopped || this.lost("the browser is offline"));
    window.addEventListener("online", () => this.stopped || this.retryNow());
  }

  /** Subscribe, replaying every event after `afterId` (the snapshot's newest). */
  start(afterId) {
    this.stopped = false;
    this.cursor = Number(afterId) || 0;
    this.target = this.cursor;
    this.connect();
  }

  stop() {
    this.stopped = true;
    this.generation += 1;
    clearTimeout(this.timer);
    this.dropClient();
  }

  /** Close the current client. Its dispose() awaits a connection attempt that may be
   * failing right now; that failure is already being handled, so it is not rethrown. */
  dropClient() {
    const client = this.client;
    this.client = null;
    if (client) Promise.resolve(client.dispose()).catch(() => {});
  }

  setState(state, detail = "") {
    this.state = state;
    this.handlers.state(state, detail);
  }

  connect() {
    const generation = ++this.generation;
    const current = () => generation === this.generation && !this.stopped;
    let pongTimer = null;
    let socket = null;
    const url = new URL("/graphql", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    this.setState(this.lostAt ? this.state : "connecting");
    this.client = createClient({
      url: url.href,
      lazy: true,
      retryAttempts: 0,
      keepAlive: KEEP_ALIVE_MS,
      connectionParams: () => this.api.headers(),
      on: {
        opened: (opened) => {
          socket = opened;
        },
        connected: () => {
          if (!current()) return;
          this.attempt = 0;
          this.lostAt = null;
          this.setState(this.cursor >= this.target ? "live" : "catching-up");
        },
        ping: (received) => {
          if (!received) pongTimer = setTimeout(() => socket?.close(4408, "no pong"), PONG_TIMEOUT_MS);
        },
        pong: (received) => {
          if (received) clearTimeout(pongTimer);
        },
        closed: (event) => {
          clearTimeout(pongTimer);
          if (!current()) return;
          if (event?.code === FORBIDDEN) this.authFailure(event.reason);
          else this.lost(`connection closed (${event?.code ?? "error"})`);
        },
      },
    });
    const subscribe = (query, variables, next) => {
      this.client.subscribe(
        { query, variables },
        {
          next: (message) => {
            if (!current()) return;
            if (message.errors?.length) return this.failed(message.errors);
            next(message.data);
          },
          error: (error) => {
            if (!current()) return;
            if (Array.isArray(error)) this.failed(error);
            else if (error?.code === FORBIDDEN) this.authFailure(error.reason);
            else this.lost("connection lost");
          },
          complete: () => current() && this.lost("subscription ended"),
        },
      );
    };
    subscribe(TASK_EVENTS, { after: String(this.cursor) }, (data) => this.onEvent(data.taskEvents));
    subscribe(AGENT_PRESENCE, {}, (data) => this.handlers.presence(data.agentPresence));
    subscribe(STATS, {}, (data) => this.handlers.stats(data.dashboardStats));
  }

  onEvent(event) {
    const id = Number(event.id);
    if (id <= this.cursor) return; // already applied (cannot happen with `after`; cheap to check)
    this.cursor = id;
    this.handlers.event(event);
    if (this.state === "catching-up" && id >= this.target) this.setState("live");
  }

  failed(errors) {
    const code = errors[0]?.extensions?.code;
    if (code === "UNAUTHENTICATED") return this.authFailure(errors[0].message);
    // e.g. the server ended a subscriber that fell too far behind: resume from the cursor.
    console.warn("subscription error; resuming", errors[0]?.message);
    this.lost(errors[0]?.message || "subscription error");
  }

  authFailure(reason) {
    this.stop();
    this.setState("offline", "needs a valid API key");
    this.handlers.authFailure(new AuthError(reason || "the key was refused", Boolean(this.api.credential)));
  }

  /** Drop the connection and come back with backoff; the header says so meanwhile. */
  lost(reason) {
    if (this.stopped) return;
    this.generation += 1; // the old connection's callbacks are now ignored
    this.dropClient();
    this.lostAt ??= Date.now();
    this.showLoss(reason);
    clearTimeout(this.timer);
    const delay = BACKOFF_MS[Math.min(this.attempt, BACKOFF_MS.length - 1)];
    this.attempt += 1;
    this.timer = setTimeout(() => this.resume(), delay * (0.75 + Math.random() * 0.5));
  }

  showLoss(reason) {
    const away = Date.now() - this.lostAt;
    const offline = !navigator.onLine || away >= OFFLINE_AFTER_MS;
    this.setState(offline ? "offline" : "reconnecting", reason);
  }

  retryNow() {
    if (!this.lostAt) return;
    this.attempt = 0;
    clearTimeout(this.timer);
    this.resume();
  }

  /** Ask the server for its newest event id over HTTP (is it back? how far to catch up?),
   * then reconnect every subscription from our cursor. */
  async resume() {
    if (this.stopped) return;
    let head;
    try {
      head = await this.api.request(HEAD, { first: 1 });
    } catch (error) {
      if (error instanceof AuthError) return this.authFailure(error.message);
      return this.lost(error.message);
    }
    if (this.stopped) return;
    this.target = Number(head.dashboardStats.recentEvents[0]?.id ?? 0);
    this.handlers.stats(head.dashboardStats);
    this.handlers.resync();
    this.setState("catching-up", `${Math.max(0, this.target - this.cursor)} events to replay`);
    this.connect();
  }
}
