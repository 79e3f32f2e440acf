// Owns: TreeScaleError, the one error type of this package: a node's error message
// (kind 9: code, message, ref) or a failure the client itself names with a code
// ("timeout", "disconnected", "max_queued", "websocket_max_message", ...).

export class TreeScaleError extends Error {
  /**
   * @param {string} code  the protocol's error code (docs/PROTOCOL.md, "Errors") or the client's
   * @param {string} message  one readable sentence
   * @param {*} [ref]  what the error is about (a req_id, a pattern...), or null
   */
  constructor(code, message, ref = null) {
    super(message ? `${code}: ${message}` : code);
    this.name = "TreeScaleError";
    this.code = code;
    this.detail = message;
    this.ref = ref ?? null;
  }
}

// Errors that refuse a hello: the session never starts, the client does not retry.
export const REFUSALS = new Set([
  "bad_token", "token_required", "bad_key",
  "max_sessions", "max_pending_auth", "max_hello_bytes",
]);
// Refusals that stay refusals after a session once worked: retrying cannot help.
export const AUTH_ERRORS = new Set(["bad_token", "token_required", "bad_key"]);
// Errors whose ref is a request's req_id end that request.
export const REQUEST_ERRORS = new Set([
  "no_responders", "bad_target", "bad_pattern", "too_large", "permission_denied",
]);
