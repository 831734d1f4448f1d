// GraphQL over HTTP with the browser's credential, and the errors the views tell apart.
import { credentialHeaders, loadCredential, saveCredential } from "./credential.js";

/** The server wants a credential (UNAUTHENTICATED, or a WebSocket closed with 4403).
 * `rejected` is true when one was sent, i.e. the key itself is wrong. */
export class AuthError extends Error {
  constructor(message, rejected) {
    super(message);
    this.rejected = rejected;
  }
}

/** A GraphQL error with the contract's code (BAD_USER_INPUT, INVALID_TRANSITION, ...). */
export class ApiError extends Error {
  constructor(message, code) {
    super(message);
    this.code = code;
  }
}

/** The server could not be reached, or answered with something that is not GraphQL. */
export class NetworkError extends Error {}

export class Api {
  constructor() {
    this.credential = loadCredential();
  }

  setCredential(secret) {
    this.credential = secret || null;
    saveCredential(this.credential);
  }

  headers() {
    return credentialHeaders(this.credential);
  }

  /** Run one operation; resolve with its data or throw AuthError / ApiError / NetworkError. */
  async request(query, variables = {}) {
    let response;
    try {
      response = await fetch("/graphql", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json", ...this.headers() },
        body: JSON.stringify({ query, variables }),
      });
    } catch (error) {
      throw new NetworkError(`the service cannot be reached (${error.message})`);
    }
    let body = null;
    try {
      body = await response.json();
    } catch {
      // not JSON: a proxy's error page, or a server shutting down
    }
    const first = body?.errors?.[0];
    if (response.status === 401 || first?.extensions?.code === "UNAUTHENTICATED") {
      throw new AuthError(first?.message || "this service needs an API key", Boolean(this.credential));
    }
    if (first) throw new ApiError(first.message, first.extensions?.code);
    if (!response.ok || !body?.data) throw new NetworkError(`the service answered HTTP ${response.status}`);
    return body.data;
  }

  /** GET / (open without a credential): the service's version and heartbeatTimeoutSeconds
   * ({} when it cannot be read). */
  async info() {
    try {
      const response = await fetch("/", { headers: { Accept: "application/json" } });
      return (await response.json()) || {};
    } catch {
      return {};
    }
  }
}
