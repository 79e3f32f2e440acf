// auth.js owns the token: where the page keeps it (sessionStorage, this tab only) and
// the prompt that asks for one when the node refuses the page without it
// (token_required, bad_token) or the token may not read $sys events.

const KEY = "treescale.token";
const AUTH_CODES = new Set(["token_required", "bad_token", "permission_denied"]);

export function isAuthError(err) {
  return Boolean(err && AUTH_CODES.has(err.code));
}

export function storedToken() {
  try {
    return sessionStorage.getItem(KEY) || null;
  } catch {
    return null;
  }
}

export function storeToken(token) {
  if (token) sessionStorage.setItem(KEY, token);
}

export function forgetToken() {
  sessionStorage.removeItem(KEY);
}

function explain(err, hadToken) {
  if (err.code === "bad_token") return "The node refused that token.";
  if (err.code === "permission_denied") return "This token may not read $sys events (it needs the sys permission).";
  return hadToken ? "The node wants a token." : "The node wants a token to let this page in.";
}

/** Show the prompt and resolve with the token typed in. */
export function askToken(err, hadToken) {
  const overlay = document.getElementById("auth");
  const form = document.getElementById("auth-form");
  const input = document.getElementById("auth-token");
  document.getElementById("auth-message").textContent = explain(err, hadToken);
  overlay.dataset.reason = err.code;
  overlay.hidden = false;
  input.value = "";
  input.focus();
  return new Promise((resolve) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      overlay.hidden = true;
      resolve(input.value.trim());
    }, { once: true });
  });
}
