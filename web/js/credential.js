// The credential a person gave this browser (API key or agent token), shared by the
// dashboard and GraphiQL. Kept in localStorage so it is asked for once.

const STORAGE_KEY = "task-service.credential";

export function loadCredential() {
  try {
    return localStorage.getItem(STORAGE_KEY) || null;
  } catch {
    return null; // storage disabled (private mode policies): ask each visit instead
  }
}

export function saveCredential(secret) {
  try {
    if (secret) localStorage.setItem(STORAGE_KEY, secret);
    else localStorage.removeItem(STORAGE_KEY);
  } catch {
    // storage disabled: the credential lives for this page only
  }
}

/** HTTP headers (and WebSocket connection_init payload) carrying `secret`: agent tokens
 * ("tsa_...") go as a bearer token, anything else as the admin key. */
export function credentialHeaders(secret) {
  if (!secret) return {};
  return secret.startsWith("tsa_") ? { Authorization: `Bearer ${secret}` } : { "X-API-Key": secret };
}
